"""Every torchvision classification model through the surgery, and the segmentation models through the callback.

For each classification model (random weights, a small input): `candidate_groups` (graph, groups, dry run), then a
quarter of every passing group's channels (whole units) is cut, the output shape is checked, the recorded history
is replayed on a fresh model whose `load_state_dict` must then give identical outputs. With `--segmentation`, each
model of `torchvision.models.segmentation` sits in a user-style LightningModule and `RLPruneCallback` prunes every
group it can in one short fit; its checkpoint must reload (`load_module`) with identical outputs. One JSON line per
model.

    python benchmarks/zoo.py [--models resnet18,vit_b_16] [--size 64] [--output benchmarks/results/zoo.json]
    python benchmarks/zoo.py --segmentation [--output benchmarks/results/zoo_segmentation.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import RLOptions, RLPruneCallback, load_module
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import model_cost

#: Models that need a larger input or a constructor argument to run at a small size.
_SIZES = {"inception_v3": 96, "maxvit_t": 224, "vit_h_14": 56}
_KWARGS = {"vit_": lambda size: {"image_size": size}}


def _build(name: str, size: int) -> torch.nn.Module:
    kwargs = next((make(size) for prefix, make in _KWARGS.items() if name.startswith(prefix)), {})
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def run_model(name: str, size: int = 64, fraction: float = 0.25) -> dict[str, Any]:
    """Prune `fraction` of every dry-run-approved group of `name` once; what happened, as a JSON-able dict."""
    size = _SIZES.get(name, size)
    start = time.perf_counter()
    record: dict[str, Any] = {"model": name, "input": size}
    try:
        model = _build(name, size).eval()
        x = surgery.example_input(model, [1, 3, size, size])
        before = model_cost(model, x)
        groups, skipped = surgery.candidate_groups(model, x)
        record.update(skipped=skipped, groups_found=len(groups) + len(skipped))
        with torch.no_grad():
            expected = model(x).shape
        graph = surgery.build_graph(model, x) if groups else None
        steps, cut_failed = [], {}
        for group in groups:
            units = surgery.channel_units(model, graph, group.name)
            take = units[: max(1, int(len(units) * fraction))]
            try:
                steps.append(surgery.prune_step(model, graph, [group.name, True, [i for u in take for i in u]]))
            except Exception as err:  # noqa: BLE001 - reported, the model is rolled back
                cut_failed[group.name] = f"{type(err).__name__}: {err}"
        after = model_cost(model, x)
        probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            out = model(probe)
        fresh = _build(name, size).eval()
        if steps:
            surgery.replay(fresh, steps, surgery.example_input(fresh, [1, 3, size, size]))
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            reloaded = fresh(probe)
        record.update(
            groups_pruned=len(steps),
            cut_failed=cut_failed,
            macs_before=before.macs,
            macs_after=after.macs,
            macs_removed=before.macs - after.macs,
            output_shape=list(out.shape),
            output_shape_ok=tuple(out.shape[1:]) == tuple(expected[1:]),
            reload_identical=bool(torch.equal(out, reloaded)),
            crash=None,
        )
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        record.update(crash=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=6))
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


class Segmenter(pl.LightningModule):
    """A torchvision segmentation model as a user wraps it: `forward` returns the `"out"` map."""

    def __init__(self, name: str, num_classes: int = 4, size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
        self.example_input_array = torch.zeros(1, 3, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run_segmentation(name: str, size: int = 64, root: Path = Path("/tmp/zoo_segmentation")) -> dict[str, Any]:
    """One short fit of `Segmenter(name)` with `RLPruneCallback` on random images and maps (tiny search)."""
    start = time.perf_counter()
    record: dict[str, Any] = {"model": name, "input": size}
    try:
        torch.manual_seed(0)
        module = Segmenter(name, size=size)
        x = torch.randn(8, 3, size, size)
        y = torch.randint(0, 4, (8, size, size))
        loader = DataLoader(TensorDataset(x, y), batch_size=4)
        before = model_cost(module, module.example_input_array)
        options = RLOptions(
            num_samples=2, agent_updates=1, reward_batches=1, calibration_batches=1, decision="greedy", init_keep=0.3
        )
        callback = RLPruneCallback(b=100.0, min_keep=0.5, options=options)  # one step, measured, never undone
        trainer = pl.Trainer(
            max_epochs=2, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=str(root), callbacks=[callback],
        )  # fmt: skip
        trainer.fit(module, loader, loader)
        after = model_cost(module, module.example_input_array)
        path = root / f"{name}.ckpt"
        trainer.save_checkpoint(path)
        module.eval()
        with torch.no_grad():
            out = module(x[:2])
            reloaded = load_module(Segmenter, path).eval()(x[:2])
        record.update(
            groups_pruned=sum(r["after"] < r["before"] for r in callback.history),
            groups_searched=len(callback.history),
            macs_before=before.macs,
            macs_after=after.macs,
            macs_removed=before.macs - after.macs,
            output_shape=list(out.shape),
            output_shape_ok=tuple(out.shape) == (2, 4, size, size),
            reload_identical=bool(torch.equal(out, reloaded)),
            crash=None,
        )
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        record.update(crash=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=6))
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of zoo records: groups pruned / skipped (with the first reason), MACs removed, checks."""
    lines = [
        "| model | input | groups pruned | skipped (first reason) | MACs removed | output shape | same on reload | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("crash"):
            lines.append(f"| {r['model']} | {r['input']} | crash: {r['crash'][:80]} | | | | | {r['seconds']} |")
            continue
        skipped = r.get("skipped", {})
        first = next(iter(skipped.items()), None)
        why = f"{len(skipped)} ({first[0]}: {first[1][:70]})" if first else "0"
        removed = 100 * r["macs_removed"] / r["macs_before"] if r["macs_before"] else 0.0
        ok = "yes" if r["output_shape_ok"] else "NO"
        same = "yes" if r["reload_identical"] else "NO"
        pruned = r["groups_pruned"]
        lines.append(
            f"| {r['model']} | {r['input']} | {pruned} | {why} | {removed:.1f} % | {ok} | {same} | {r['seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: every classification model)")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each group's units to cut")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--segmentation", action="store_true", help="the segmentation models, through the callback")
    parser.add_argument("--table", type=Path, nargs="+", help="print a markdown table of these JSON-lines files")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for path in args.table for line in path.read_text().splitlines() if line]))
        return 0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    module = torchvision.models.segmentation if args.segmentation else torchvision.models
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=module)
    run = run_segmentation if args.segmentation else run_model
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("")
    for name in names:
        line = json.dumps(run(name, args.size) if args.segmentation else run(name, args.size, args.fraction))
        print(line, flush=True)
        if args.output:
            with args.output.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
