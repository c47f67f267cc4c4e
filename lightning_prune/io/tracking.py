"""What the user sees of a pruning run: logger metrics, the search progress line, console lines, the summary.

Every Lightning logger (CSV, TensorBoard, Weights & Biases) receives the same `prune/...` scalars. A
`WandbLogger` run also gets the callback's hyper-parameters in its config, a reward curve and keep-probability
histogram per layer plotted against `prune/update_global`, a table and a bar chart of the channels per layer,
and the final pruned checkpoint as a `model` artifact. `wandb` is imported only when a `WandbLogger` is among
the trainer's loggers. Only rank 0 reports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from pytorch_lightning.loggers import WandbLogger
from rich.console import Console
from rich.markup import escape
from rich.table import Table

UPDATE_STEP = "prune/update_global"
"""Agent updates since pruning began (layer index x updates per layer + update): the x-axis of per-layer series."""

LAYER_SERIES = ("reward_mean", "reward_best", "keep_prob_mean", "keep_probs")
"""What W&B records per layer and update, under `prune/<layer>/<series>` (`keep_probs` is a histogram)."""

FINAL_CHECKPOINT = "pruned-final.ckpt"
"""Written next to ModelCheckpoint's files when none of them holds the model as training ended."""


def layer_key(layer: str, series: str) -> str:
    """W&B key of a per-layer series; dots in module names become `_` (`define_metric` reads a dot as nesting)."""
    return f"prune/{layer.replace('.', '_')}/{series}"


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's `WandbLogger`s (the same list on every rank; their runs exist on rank 0 only)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def log_hyperparams(trainer: pl.Trainer, hparams: dict[str, Any]) -> None:
    """The callback's hyper-parameters under `rlprune` in every logger's config (W&B run config, hparams.yaml)."""
    for logger in trainer.loggers:
        logger.log_hyperparams({"rlprune": hparams})


# -- one layer's search ------------------------------------------------------------------------------------


class SearchTracker:
    """Reports one layer's search: scalars after each agent update and a transient progress line.

    Every logger receives `prune/reward_mean`, `prune/reward_best`, `prune/keep_prob_mean`, `prune/update`,
    `prune/layer_index` and `prune/update_global` at the trainer's global step (constant during a search).
    W&B runs also get `prune/<layer>/...` series whose x-axis is `prune/update_global`, so each layer's reward
    curve is readable. Use as a context manager around the updates and call `update` after each one.

    Args:
        trainer: the running trainer.
        layer: name of the searched layer.
        layer_index: position of the layer in the pruning order (0-based).
        total_layers: layers to prune in the whole run.
        updates: agent updates of this search.
    """

    def __init__(self, trainer: pl.Trainer, layer: str, layer_index: int, total_layers: int, updates: int) -> None:
        self.trainer = trainer
        self.layer = layer
        self.layer_index = layer_index
        self.total_layers = total_layers
        self.updates = updates
        self._display: _RichLine | _TqdmLine | None = None

    def __enter__(self) -> SearchTracker:
        if not self.trainer.is_global_zero:
            return self
        for logger in wandb_loggers(self.trainer):
            run = logger.experiment
            run.define_metric(UPDATE_STEP)
            for series in LAYER_SERIES:
                run.define_metric(layer_key(self.layer, series), step_metric=UPDATE_STEP)
        description = f"Pruning {self.layer} ({self.layer_index + 1}/{self.total_layers})"
        self._display = progress_line(self.trainer, description, self.updates)
        return self

    def update(self, update: int, rewards: torch.Tensor, probs: torch.Tensor) -> None:
        """Report agent update `update` (0-based): the rewards of its samples and the keep probabilities after it."""
        if not self.trainer.is_global_zero:
            return
        probs = probs.detach().float().cpu()
        reward_mean, reward_best, keep_mean = float(rewards.mean()), float(rewards.max()), float(probs.mean())
        loggers = wandb_loggers(self.trainer)
        if loggers:
            import wandb

            histogram = wandb.Histogram(np_histogram=np.histogram(probs.numpy(), bins=20, range=(0.0, 1.0)))
            values = (reward_mean, reward_best, keep_mean, histogram)
            series = {layer_key(self.layer, s): v for s, v in zip(LAYER_SERIES, values, strict=True)}
            for logger in loggers:  # staged: the row is committed with the scalars below
                logger.experiment.log(series, commit=False)
        metrics = {
            "prune/reward_mean": reward_mean,
            "prune/reward_best": reward_best,
            "prune/keep_prob_mean": keep_mean,
            "prune/update": float(update),
            "prune/layer_index": float(self.layer_index),
            UPDATE_STEP: float(self.layer_index * self.updates + update),
        }
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.trainer.global_step)
        if self._display is not None:
            self._display.advance(f"reward {reward_mean:.3f}")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._display is not None:
            self._display.close()
            self._display = None


def progress_line(trainer: pl.Trainer, description: str, total: int) -> _RichLine | _TqdmLine | None:
    """A transient line under the trainer's progress bar (rich or tqdm), or None where it would not belong:
    progress bar disabled or of another kind, tqdm writing to something other than a terminal, or rank > 0.
    Rich decides for itself and draws only on a terminal or in a notebook."""
    bar = trainer.progress_bar_callback
    if not trainer.is_global_zero or bar is None or bar.is_disabled:
        return None
    if isinstance(bar, RichProgressBar):
        return _RichLine(bar, description, total) if bar.progress is not None else None
    if isinstance(bar, TQDMProgressBar):
        stream = sys.stdout
        return _TqdmLine(bar, description, total) if stream is not None and stream.isatty() else None
    return None


class _RichLine:
    """A task of RichProgressBar's own live display, removed when done."""

    def __init__(self, bar: RichProgressBar, description: str, total: int) -> None:
        assert bar.progress is not None
        self.progress = bar.progress
        style = bar.theme.description
        self.description = f"[{style}]{escape(description)}" if style else escape(description)
        self.task = self.progress.add_task(self.description, total=total)
        self.progress.refresh()

    def advance(self, text: str) -> None:
        self.progress.update(self.task, advance=1, description=f"{self.description} {text}")
        self.progress.refresh()

    def close(self) -> None:
        self.progress.remove_task(self.task)
        self.progress.refresh()


class _TqdmLine:
    """A tqdm bar one line below Lightning's training bar, cleared when done."""

    def __init__(self, bar: TQDMProgressBar, description: str, total: int) -> None:
        self.tqdm = Tqdm(
            desc=description,
            total=total,
            position=2 * bar.process_position + 1,
            leave=False,
            mininterval=0,  # agent updates are seconds apart: draw each one
            dynamic_ncols=True,
            file=sys.stdout,
            bar_format=bar.BAR_FORMAT,
        )

    def advance(self, text: str) -> None:
        self.tqdm.set_postfix_str(text, refresh=False)
        self.tqdm.update(1)

    def close(self) -> None:
        self.tqdm.close()


# -- the level controller -----------------------------------------------------------------------------------

PROBE_COLUMNS = ["probe", "ratio", "macs_removed_pct", "cycle_steps", "drop", "se", "recovery", "predicted_drop"]
"""Columns of the probes table: each probe's level, its paired drops after each cycle, its prediction."""


def probe_rows(probes: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per cycle of each probe, in `PROBE_COLUMNS` order (the prediction on the probe's first row: the
    one-cycle drop carried to the end of the run)."""
    rows = []
    for i, p in enumerate(probes):
        for j, ((drop, se), steps) in enumerate(zip(p["readings"], p["cycles"], strict=True)):
            first = j == 0
            rows.append(
                [
                    i + 1,
                    round(p["ratio"], 4),
                    round(100 * p["macs_removed"], 2),
                    steps,
                    round(drop, 3),
                    round(se, 3),
                    round(p["recovery"], 3),
                    round(p["predicted"], 3) if first else None,
                ]
            )
    return rows


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """`metrics` to every logger at the current step, from rank 0."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def log_level(trainer: pl.Trainer, probes: list[dict[str, Any]], level: dict[str, Any]) -> None:
    """The chosen level to every logger (`prune/level/...`), and the probes as a W&B table (`prune/probes`)."""
    if not trainer.is_global_zero:
        return
    metrics = {
        "prune/level/ratio": float(level["ratio"]),
        "prune/level/macs_removed": float(level["macs_removed"]),
        "prune/level/predicted_drop": float(level["predicted"]),
        "prune/level/margin": float(level["margin"]),
    }
    log_metrics(trainer, metrics)
    for logger in wandb_loggers(trainer):
        logger.log_table("prune/probes", columns=PROBE_COLUMNS, data=probe_rows(probes), step=trainer.global_step)


# -- end of the run -----------------------------------------------------------------------------------------


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Whole-model scalars of a pruning summary: baseline and final params, MACs and accuracy, reductions."""
    base, final = summary["baseline"], summary["final"]
    metrics = {
        "prune/baseline/params": float(base["params"]),
        "prune/baseline/macs": float(base["macs"]),
        "prune/final/params": float(final["params"]),
        "prune/final/macs": float(final["macs"]),
        "prune/final/params_reduction": 1 - final["params"] / base["params"],
        "prune/final/macs_reduction": 1 - final["macs"] / base["macs"],
    }
    if base["val_acc"] is not None:
        metrics["prune/baseline/val_acc"] = float(base["val_acc"])
    if final.get("drop") is not None:
        metrics["prune/final/check_drop"] = float(final["drop"])
        metrics["prune/final/check_drop_se"] = float(final["se"])
    if final["val_acc"] is not None:
        metrics["prune/final/val_acc"] = float(final["val_acc"])
        if base["val_acc"] is not None:
            metrics["prune/final/acc_drop"] = float(base["val_acc"] - final["val_acc"])
    return metrics


LAYER_COLUMNS = ["layer", "filters_before", "filters_after", "removed_pct"]
"""Columns of the per-layer table."""


def layer_rows(summary: dict[str, Any]) -> list[list[Any]]:
    """One row per pruned layer, in `LAYER_COLUMNS` order."""
    return [
        [layer["name"], layer["before"], layer["after"], round(100 * (1 - layer["after"] / layer["before"]), 2)]
        for layer in summary["layers"]
    ]


def layer_widths(summary: dict[str, Any]) -> dict[str, list[int]]:
    """Each layer's filters before pruning and after it."""
    return {layer["name"]: [layer["before"], layer["after"]] for layer in summary["layers"]}


def channels_chart(summary: dict[str, Any]) -> np.ndarray:
    """Bar chart of the filters per layer before and after pruning, as an RGB image (H x W x 3, uint8)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [{"name": name, "before": b, "after": a} for name, (b, a) in layer_widths(summary).items()]
    x = np.arange(len(layers))
    figure = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2.0), 3.5), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(x - 0.2, [layer["before"] for layer in layers], width=0.4, label="before")
    axes.bar(x + 0.2, [layer["after"] for layer in layers], width=0.4, label="after")
    axes.set_xticks(x, [layer["name"] for layer in layers], rotation=45, ha="right", fontsize=8)
    axes.set_ylabel("filters")
    axes.set_title("Filters per layer")
    axes.legend()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_final(trainer: pl.Trainer, summary: dict[str, Any]) -> None:
    """The run's result: `final_metrics` to every logger; with W&B also the layer table (`prune/layers`), the
    bar chart (`prune/channels`) and the final pruned checkpoint as a `model` artifact with the alias `pruned`.

    Call on every rank at the end of training: where no ModelCheckpoint file holds the final model, this saves
    it (`trainer.save_checkpoint` is collective).
    """
    loggers = wandb_loggers(trainer)
    checkpoint = final_checkpoint(trainer) if loggers else None
    if not trainer.is_global_zero:
        return
    step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics(final_metrics(summary), step=step)
    if not loggers:
        return
    rows, chart = layer_rows(summary), channels_chart(summary)
    for logger in loggers:
        logger.log_table("prune/layers", columns=LAYER_COLUMNS, data=rows, step=step)
        logger.log_image("prune/channels", [chart], step=step, caption=["filters per layer before / after"])
        if summary.get("probes"):
            logger.log_table("prune/probes", columns=PROBE_COLUMNS, data=probe_rows(summary["probes"]), step=step)
        if checkpoint is not None:
            log_checkpoint_artifact(logger, *checkpoint, summary)


def final_checkpoint(trainer: pl.Trainer) -> tuple[Path, bool] | None:
    """The checkpoint file holding the model as training ended, and whether ModelCheckpoint wrote it.

    ModelCheckpoint's newest file is it when that was saved at the last step; otherwise (its files are all older,
    e.g. a monitored best from before pruning) the model is saved as `pruned-final.ckpt` in its directory.
    None without a ModelCheckpoint (checkpointing off). Collective: call on every rank.
    """
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint):
        return None
    newest = getattr(callback, "_last_checkpoint_saved", "")
    if newest and getattr(callback, "_last_global_step_saved", None) == trainer.global_step:
        return Path(newest), True
    path = Path(callback.dirpath or trainer.default_root_dir) / FINAL_CHECKPOINT
    trainer.save_checkpoint(path, weights_only=callback.save_weights_only)
    return path, False


def log_checkpoint_artifact(logger: WandbLogger, path: Path, from_callback: bool, summary: dict[str, Any]) -> None:
    """Log `path` as a `model` artifact (aliases `latest`, `pruned`) with the pruning result as metadata, unless
    the logger's own `log_model` uploads it already (a file ModelCheckpoint wrote)."""
    if (from_callback and getattr(logger, "_log_model", False)) or not path.is_file():
        return
    import wandb

    run = logger.experiment
    metadata = {
        "original_filename": path.name,
        "b": summary["b"],
        "baseline": summary["baseline"],
        "final": summary["final"],
        "layers": layer_widths(summary),
    }
    name = getattr(logger, "_checkpoint_name", None) or f"model-{run.id}"
    artifact = wandb.Artifact(name=name, type="model", metadata=metadata)
    artifact.add_file(str(path), name="model.ckpt", policy=getattr(logger, "add_file_policy", "mutable"))
    run.log_artifact(artifact, aliases=["latest", "pruned"])


def write_summary(trainer: pl.Trainer, summary: dict[str, Any]) -> Path | None:
    """Write `pruning_summary.json` into the run's log directory and print the summary table (rank 0).

    Every rank must call it: `trainer.log_dir` is a collective under DDP.
    """
    directory = Path(trainer.log_dir or trainer.default_root_dir)
    if not trainer.is_global_zero:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pruning_summary.json"
    path.write_text(json.dumps(summary, indent=2))
    print_summary(summary, path)
    return path


def print_summary(summary: dict[str, Any], path: Path | None = None) -> None:
    """The per-layer table and the whole-model totals on the console."""
    if "b" in summary:
        budget = f"b = {summary['b']}"
    else:
        budget = f"target {summary['target']} of {summary['target_type']}"
    table = Table(title=f"Pruning summary ({budget})")
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
        label = "val acc" if summary.get("monitor", "val_acc") == "val_acc" else summary["monitor"]
        acc = f"; {label} {base['val_acc']:.2f} -> {final['val_acc']:.2f}"
    where = f" Written to {path}" if path else ""
    console.print(
        f"params {base['params']:,} -> {final['params']:,} ({100 * (1 - final['params'] / base['params']):.1f}% "
        f"fewer); MACs {base['macs']:,} -> {final['macs']:,} ({100 * (1 - final['macs'] / base['macs']):.1f}% "
        f"fewer){acc}.{where}"
    )
    if summary.get("probes"):
        print_probes(console, summary)


def print_probes(console: Console, summary: dict[str, Any]) -> None:
    """Why the level: each probe's paired drops and prediction, the level chosen, the drop realised."""
    table = Table(title=f"Level probes (paired drop against the dense network, b = {summary['b']})")
    for column in ("probe", "filters removed", "MACs removed", "training steps", "drop", "predicted final"):
        table.add_column(column, justify="right")
    for row in probe_rows(summary["probes"]):
        predicted = "" if row[7] is None else f"{row[7]:.2f} (x {row[6]:.2f})"
        cells = [str(row[0]), f"{100 * row[1]:.1f}%", f"{row[2]:.1f}%", str(row[3]), f"{row[4]:.2f} +- {row[5]:.2f}"]
        table.add_row(*cells, predicted)
    console.print(table)
    level, final = summary["level"], summary["final"]
    console.print(
        f"Chosen: {100 * level['ratio']:.1f}% of every group's filters, {100 * level['macs_removed']:.1f}% of the "
        f"MACs, predicted final drop {level['predicted']:.2f} (margin {level['margin']:.2f}). Realised on the same "
        f"held-out images: {summary['baseline']['check']:.2f} -> {final['check']:.2f}, a drop of "
        f"{final['drop']:.2f} +- {final['se']:.2f}."
    )
