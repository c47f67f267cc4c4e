"""What pruning did to a checkpoint's model: channels per pruned layer and whole-model params and MACs.

The layers come from the pruning plan in the module's state dict and, when the checkpoint holds one, from the
pruning callback's history (`lightning_prune.callbacks.history`, the same for both callbacks).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from torch import nn

from lightning_prune.callbacks import history
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import model_cost
from lightning_prune.engine.plan import PLAN_KEY, PruningPlan, network_of
from lightning_prune.io.checkpoint import CheckpointError, check_writable, load_pruned, read_checkpoint
from lightning_prune.zoo.module import ImageClassifier


def _callback_state(checkpoint: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A pruning callback's name and saved state (in the current history schema): the entry with a history."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if isinstance(state, dict) and {"groups", "history", "baseline"} <= set(state):
            return key.split("{")[0], history.upgrade(state)
    return None


def _unpruned(module: nn.Module) -> nn.Module:
    """A freshly built, unpruned copy of the checkpoint's module: its class called with its saved hyper-parameters
    (those its constructor takes, as `load_from_checkpoint` does)."""
    cls = type(module)
    accepted = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    return cls(**{k: v for k, v in module.hparams.items() if takes_any or k in accepted})


def _percent_removed(before: int, after: int) -> float:
    return round(100.0 * (1 - after / before), 2) if before else 0.0


def _layer(name: str, before: nn.Module, after: nn.Module) -> dict[str, Any]:
    """Layer `name`'s filters in the unpruned and the pruned network."""
    n_before = surgery.out_channels(before.get_submodule(name))
    n_after = surgery.out_channels(after.get_submodule(name))
    return {"name": name, "before": n_before, "after": n_after, "removed_pct": _percent_removed(n_before, n_after)}


def _totals(before: nn.Module, after: nn.Module, shape: list[int]) -> dict[str, dict[str, Any]]:
    """Whole-model params and MACs of the unpruned and the pruned network."""
    cost_before = model_cost(before, surgery.example_input(before, shape))
    cost_after = model_cost(after, surgery.example_input(after, shape))
    return {
        key: {
            "before": getattr(cost_before, key),
            "after": getattr(cost_after, key),
            "removed_pct": _percent_removed(getattr(cost_before, key), getattr(cost_after, key)),
        }
        for key in ("params", "macs")
    }


def build_report(path: str | Path, model_class: type[nn.Module] = ImageClassifier) -> dict[str, Any]:
    """Per-layer channels before/after and whole-model params and MACs (unpruned vs pruned) of a checkpoint of a
    `model_class` module.

    Raises:
        CheckpointError: unreadable file, not a checkpoint of a pruned module, or no pruning information in it.
    """
    checkpoint = read_checkpoint(path)
    plan = PruningPlan.from_state(checkpoint["state_dict"][PLAN_KEY])
    found = _callback_state(checkpoint)
    name, callback = found if found is not None else (None, None)
    if not plan.steps and not (callback and callback["history"]):
        raise CheckpointError(
            f"'{path}' holds no pruning information: its pruning plan is empty and no pruning callback's history "
            "is recorded in it. Report a checkpoint saved after a pruning callback (or `plan.prune`) cut the model."
        )
    pruned = load_pruned(path, model_class)
    unpruned = _unpruned(pruned)
    network_before, network_after = network_of(unpruned), network_of(pruned)
    records = callback["history"] if callback else []
    names = list(dict.fromkeys([*(r["name"] for r in records), *plan.layers]))
    layers = [_layer(name, network_before, network_after) for name in names]
    totals = _totals(network_before, network_after, plan.input_shape)
    search = None
    if callback is not None:
        search = {
            "callback": name,
            "layers_done": len({r["name"] for r in records}),
            "layers_total": len(callback["groups"]),
            "baseline_val_acc": (callback["baseline"] or {}).get("val_acc"),
        }
    model_name = pruned.hparams.get("model")  # an ImageClassifier's network name
    if not isinstance(model_name, str):
        model_name = model_class.__name__
    return {
        "checkpoint": str(path),
        "model": model_name,
        "input_shape": list(plan.input_shape),
        "epoch": checkpoint.get("epoch"),
        "layers": layers,
        **totals,
        "search": search,
    }


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """The per-layer table and the whole-model totals, with rich."""
    console = console or Console()
    table = Table(title=f"Pruned layers of {report['model']}", caption=report["checkpoint"])
    table.add_column("layer")
    for column in ("channels before", "channels after", "removed"):
        table.add_column(column, justify="right")
    for layer in report["layers"]:
        table.add_row(layer["name"], str(layer["before"]), str(layer["after"]), f"{layer['removed_pct']:.1f}%")
    console.print(table)
    for key, label in (("params", "params"), ("macs", "MACs")):
        total = report[key]
        console.print(
            f"{label}: {total['before']:,} -> {total['after']:,} ({total['removed_pct']:.1f}% removed)",
            highlight=False,
        )
    search = report["search"]
    if search is not None:
        acc = search["baseline_val_acc"]
        console.print(
            f"{search['callback']}: {search['layers_done']}/{search['layers_total']} layers pruned"
            + (f"; val acc before pruning {acc:.2f}" if acc is not None else ""),
            highlight=False,
        )


def plot_channels(report: dict[str, Any], path: str | Path) -> Path:
    """Bar plot of channels per layer before and after pruning, written as an image (PNG by the suffix).

    Raises:
        ValueError: a file cannot be written at `path` (see `checkpoint.check_writable`).
    """
    check_writable(path, "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report["layers"]
    positions = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(layers) + 2), 4.5))
    try:
        ax.bar([p - 0.2 for p in positions], [layer["before"] for layer in layers], width=0.4, label="before")
        ax.bar([p + 0.2 for p in positions], [layer["after"] for layer in layers], width=0.4, label="after")
        ax.set_xticks(list(positions), [layer["name"] for layer in layers], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("output channels")
        ax.set_title(
            f"{report['model']}: MACs -{report['macs']['removed_pct']:.1f}%, "
            f"params -{report['params']['removed_pct']:.1f}%"
        )
        ax.legend()
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
