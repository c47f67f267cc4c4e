"""Allocations retrained from the baseline: each layer cut once, before fine-tuning, to a filter count, then the
b-sweep's fine-tuning budget. `--criterion` picks which filters a layer keeps: "l1" (default) the largest L1 norms
(Li et al.), "taylor" the largest first-order Taylor scores `sum |w * dL/dw|` of the layer's filters on
`--taylor-batches` training batches, recomputed after each earlier layer's cut.

The counts are an RL run's (`--summary`), or a tilted family (`--tilt T... --macs-removed F...`): layer i of L keeps
`scale * exp(T * (i / (L - 1) - 1/2))` of its filters (at least one, at most all), `scale` set by bisection so the
network loses the fraction F of its MACs. T = 0 is a uniform ratio; T < 0 keeps more of the early layers, where the
MACs are, and cuts the late ones deeper, where the parameters are; T > 0 the reverse. On a residual network,
`--stream-tilt S...` tilts the family between kinds of group: a group that couples several convolutions' outputs
(a residual stream) keeps `exp(S / 2)` times its share, every other group (a block's inner conv) `exp(-S / 2)`
times; S > 0 keeps the streams fuller and cuts the blocks deeper, S < 0 the reverse.

It separates what an RL run chose (how many filters each layer keeps) from how its run trained: each allocation
is cut once from the baseline and fine-tuned for the sweep's whole budget, as the rule-based methods of `bsweep.py`
are. Every flag other than `--summary` and
`--output` is `bsweep.py`'s and must be the sweep's (baseline checkpoint in `--work`, split, fine-tuning budget).
Each RL run of a sweep writes its `pruning_summary.json` into its log folder, `<work>/rl_b<b>/version_<n>/`.

    python benchmarks/allocation.py --summary benchmarks/work/vgg16w025_fm/rl_b2.0/version_3/pruning_summary.json \\
        benchmarks/work/vgg16w025_fm/rl_b3.0/version_7/pruning_summary.json \\
        --output benchmarks/results/vgg16w025_fashion_mnist_recovered_allocation.json \\
        --model vgg16 --width 0.25 --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist \\
        --finetune-epochs 16 --limit-train-batches 0.25 --work benchmarks/work/vgg16w025_fm
    python benchmarks/allocation.py --tilt -2 0 2 --macs-removed 0.7 --output tilts.json ...  # the same flags
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsweep  # noqa: E402

from lightning_prune import ImageClassifier  # noqa: E402
from lightning_prune.engine import data, surgery  # noqa: E402
from lightning_prune.engine.cost import model_cost  # noqa: E402
from lightning_prune.engine.importance import CRITERIA, Criterion, filter_scores  # noqa: E402
from lightning_prune.engine.scoring import Batch  # noqa: E402
from lightning_prune.search.distribution import removed_filters  # noqa: E402


def cut_to_counts(
    module: ImageClassifier, layers: list[dict[str, Any]], criterion: Criterion = "l1", batches: Sequence[Batch] = ()
) -> None:
    """Cut each layer of a pruning summary to its kept count, dropping its least important filters by `criterion`
    (the Taylor scores accumulate over `batches`), each layer scored after the cuts before it."""
    model = module.model
    graph = surgery.build_graph(model, surgery.example_input(model, module.plan.input_shape))
    for layer in layers:
        conv = model.get_submodule(layer["name"])
        importance = filter_scores(model, [conv], criterion, batches)[conv]
        removed = removed_filters(importance, len(importance) - layer["after"])
        if removed:
            module.plan.steps.append(list(surgery.prune_step(model, graph, [layer["name"], True, removed])))


def tilted_counts(
    sizes: list[int], tilt: float, scale: float, streams: list[bool] | None = None, stream_tilt: float = 0.0
) -> list[int]:
    """Filters each layer keeps: `scale * exp(tilt * (i / (L - 1) - 1/2))` of layer i's `sizes[i]`, in [1, size];
    times `exp(stream_tilt / 2)` where `streams[i]` (the group couples several convolutions) and
    `exp(-stream_tilt / 2)` elsewhere."""
    last = max(len(sizes) - 1, 1)
    streams = streams or [False] * len(sizes)
    return [
        min(n, max(1, round(n * scale * math.exp(tilt * (i / last - 0.5) + stream_tilt * (0.5 if s else -0.5)))))
        for i, (n, s) in enumerate(zip(sizes, streams, strict=True))
    ]


A_SWEEP = "a b-sweep (bsweep.py trains its baseline.ckpt there)"


def _baseline(args: argparse.Namespace, which: str) -> Path:
    base = Path(args.work) / "baseline.ckpt"
    if not base.exists():
        raise SystemExit(f"{base} does not exist: pass the --work folder of {which}")
    return base


def tilted_layers(base: Path, tilt: float, macs_removed: float, stream_tilt: float = 0.0) -> list[dict[str, Any]]:
    """The tilted allocation whose MACs come closest to `1 - macs_removed` of the baseline's (bisection on scale)."""
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu")
    model = module.model
    x = surgery.example_input(model, module.plan.input_shape)
    groups = surgery.channel_groups(model, surgery.build_graph(model, x), x)
    streams = [len(g.members) > 1 for g in groups]
    if stream_tilt and not any(streams):
        raise SystemExit(
            f"--stream-tilt {stream_tilt}: no channel group of {type(model).__name__} couples several convolutions "
            "(a residual stream), so there is nothing to tilt; use --tilt alone on this network"
        )
    target = (1 - macs_removed) * model_cost(model, x).macs
    low, high, best = 0.0, math.exp((abs(tilt) + abs(stream_tilt)) / 2), (math.inf, [])
    for _ in range(20):
        scale = (low + high) / 2
        counts = tilted_counts([g.size for g in groups], tilt, scale, streams, stream_tilt)
        layers = [{"name": g.name, "after": c} for g, c in zip(groups, counts, strict=True)]
        cut = copy.deepcopy(module)
        cut_to_counts(cut, layers)
        macs = model_cost(cut.model, x).macs
        best = min(best, (abs(macs - target), layers), key=lambda pair: pair[0])
        low, high = (scale, high) if macs < target else (low, scale)
    return best[1]


def retrain(
    args: argparse.Namespace, dm: pl.LightningDataModule, base: Path, layers: list[dict[str, Any]], b: float | None
) -> dict[str, Any]:
    """Cut the baseline to `layers`' counts by `args.criterion` and fine-tune it for the sweep's budget."""
    pl.seed_everything(args.seed)
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu", **bsweep.finetune_overrides(args))
    batches = []
    if args.criterion == "taylor":
        dm.setup("fit")
        batches = data.drawn_batches(dm.train_dataloader(), args.taylor_batches, args.seed, shuffle=True)
    cut_to_counts(module, layers, args.criterion, batches)
    run = bsweep.finetune(args, dm, base, module, "allocation", b, [])
    kept = {layer["name"]: layer["after"] for layer in layers}
    return {**run, "kept": kept, "criterion": args.criterion, "seed": args.seed}


def retrain_summary(args: argparse.Namespace, dm: pl.LightningDataModule, summary_path: Path) -> dict[str, Any]:
    summary = json.loads(summary_path.read_text())
    base = _baseline(args, f"the sweep whose RL run wrote {summary_path}")
    run = retrain(args, dm, base, summary["layers"], summary["b"])
    return {**run, "method": "rl_allocation", "rl_final_macs": summary["final"]["macs"], "summary": str(summary_path)}


def retrain_tilted(
    args: argparse.Namespace,
    dm: pl.LightningDataModule,
    layers: list[dict[str, Any]],
    tilt: float,
    macs_removed: float,
    stream_tilt: float,
) -> dict[str, Any]:
    base = _baseline(args, A_SWEEP)
    run = retrain(args, dm, base, layers, None)
    return {**run, "method": "tilted", "tilt": tilt, "stream_tilt": stream_tilt, "macs_target": macs_removed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--summary", type=Path, nargs="+", help="pruning_summary.json of RL runs")
    source.add_argument("--tilt", type=float, nargs="+", help="tilts of the tilted family (needs --macs-removed)")
    p.add_argument("--macs-removed", type=float, nargs="+", default=[], help="fractions of MACs the tilts remove")
    p.add_argument(
        "--stream-tilt",
        type=float,
        nargs="+",
        default=[0.0],
        help="tilts between residual streams and the other groups (with --tilt; every pair is run)",
    )
    p.add_argument("--output", type=Path, required=True, help="results JSON")
    p.add_argument(
        "--criterion",
        default="l1",
        choices=CRITERIA,
        help="which filters each layer keeps when fine-tuned: the largest L1 norms or first-order Taylor scores",
    )
    p.add_argument("--taylor-batches", type=int, default=8, help="training batches the Taylor scores accumulate over")
    own, rest = p.parse_known_args(argv)
    if own.summary and own.macs_removed:
        p.error("--macs-removed goes with --tilt: an RL run's allocation (--summary) has the MACs that run reached")
    if own.tilt and not own.macs_removed:
        p.error("--tilt needs --macs-removed: the fractions of the baseline's MACs each tilted allocation removes")
    if own.summary and own.stream_tilt != [0.0]:
        p.error("--stream-tilt goes with --tilt: an RL run's allocation (--summary) has its own counts")
    if own.taylor_batches < 1:
        p.error(f"--taylor-batches {own.taylor_batches} must be >= 1, e.g. 8")
    if any(not 0 < f < 1 for f in own.macs_removed):
        p.error(f"--macs-removed {own.macs_removed}: each fraction must lie in (0, 1), e.g. 0.7 for 70 % fewer MACs")
    args = bsweep.parse([*rest, "--output", str(own.output)])
    args.criterion, args.taylor_batches = own.criterion, own.taylor_batches
    dm = bsweep.datamodule(args)
    if own.summary:
        runs = [retrain_summary(args, dm, path) for path in own.summary]
    else:
        base = _baseline(args, A_SWEEP)
        family = [(t, f, s) for f in own.macs_removed for t in own.tilt for s in own.stream_tilt]
        plans = [(tilted_layers(base, t, f, s), t, f, s) for t, f, s in family]  # every bad tilt fails before training
        runs = [retrain_tilted(args, dm, *plan) for plan in plans]
    own.output.parent.mkdir(parents=True, exist_ok=True)
    own.output.write_text(json.dumps({"protocol": vars(args), "runs": runs}, indent=2, default=str))
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
