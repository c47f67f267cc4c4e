"""What the user sees of a pruning run: logger metrics, console lines, the summary table and file.

The callback calls these functions at each search update, after each pruned layer and at the end; they
only report, so any Lightning logger (CSV, TensorBoard, Weights & Biases) receives the same scalars.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from rich.console import Console
from rich.table import Table


def log_update(
    trainer: pl.Trainer, layer: str, layer_index: int, update: int, rewards: torch.Tensor, probs: torch.Tensor
) -> None:
    """Scalars of one agent update (reward mean and best, mean keep probability) to every logger."""
    if not trainer.is_global_zero:
        return
    metrics = {
        "prune/reward_mean": float(rewards.mean()),
        "prune/reward_best": float(rewards.max()),
        "prune/keep_prob_mean": float(probs.mean()),
        "prune/update": float(update),
        "prune/layer_index": float(layer_index),
    }
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


def log_layer(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    record: dict[str, Any],
    baseline: dict[str, Any],
    total_layers: int,
    p_star: float,
    b: float,
) -> None:
    """Per-layer result (filters before/after, decision accuracy, whole-model cost) to loggers and console."""
    reduction = 1 - record["macs"] / baseline["macs"]
    pl_module.log_dict({
        "prune/filters_before": float(record["before"]),
        "prune/filters_after": float(record["after"]),
        "prune/decision_acc": float(record["decision_acc"]),
        "prune/params": float(record["params"]),
        "prune/macs": float(record["macs"]),
        "prune/macs_reduction": reduction,
    })  # fmt: skip
    rank_zero_info(
        f"[RLPrune] layer {record['index'] + 1}/{total_layers} {record['name']}: "
        f"{record['before']} -> {record['after']} filters, "
        f"val acc of the decision {record['decision_acc']:.2f} (p*={p_star:.2f}, b={b}), "
        f"MACs -{100 * reduction:.1f}%"
    )


def write_summary(trainer: pl.Trainer, summary: dict[str, Any]) -> Path | None:
    """Write `pruning_summary.json` into the run's log directory and print the summary table (rank 0)."""
    if not trainer.is_global_zero:
        return None
    directory = Path(trainer.log_dir or trainer.default_root_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pruning_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    print_summary(summary, path)
    return path


def print_summary(summary: dict[str, Any], path: Path | None = None) -> None:
    """The per-layer table and the whole-model totals on the console."""
    table = Table(title=f"RLPrune summary (b = {summary['b']})")
    for column in ("layer", "filters before", "filters after", "removed"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in summary["layers"]:
        removed = 1 - layer["after"] / layer["before"]
        table.add_row(layer["name"], str(layer["before"]), str(layer["after"]), f"{100 * removed:.0f}%")
    base, final = summary["baseline"], summary["final"]
    console = Console()
    console.print(table)
    acc = ""
    if base["val_acc"] is not None and final["val_acc"] is not None:
        acc = f"; val acc {base['val_acc']:.2f} -> {final['val_acc']:.2f}"
    where = f" Written to {path}" if path else ""
    console.print(
        f"params {base['params']:,} -> {final['params']:,} ({100 * (1 - final['params'] / base['params']):.1f}% "
        f"fewer); MACs {base['macs']:,} -> {final['macs']:,} ({100 * (1 - final['macs'] / base['macs']):.1f}% "
        f"fewer){acc}.{where}"
    )
