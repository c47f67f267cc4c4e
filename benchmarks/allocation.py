"""An RL run's allocation retrained from the baseline: each layer cut once, before fine-tuning, to the filter count
the run kept (the L1-norm ranking picks which filters), then the b-sweep's fine-tuning budget.

It separates what the RL search chose (how many filters each layer keeps) from how its run trained: pruned layer by
layer with fine-tuning between the layers, an RL run trains its final network as a whole only after the last cut,
while the rule-based methods of `bsweep.py` train theirs for the whole budget. Every flag other than `--summary` and
`--output` is `bsweep.py`'s and must be the sweep's (baseline checkpoint in `--work`, split, fine-tuning budget).
Each RL run of a sweep writes its `pruning_summary.json` into its log folder, `<work>/rl_b<b>/version_<n>/`.

    python benchmarks/allocation.py --summary benchmarks/work/vgg16w025_fm/rl_b2.0/version_3/pruning_summary.json \\
        benchmarks/work/vgg16w025_fm/rl_b3.0/version_7/pruning_summary.json \\
        --output benchmarks/results/vgg16w025_fashion_mnist_recovered_allocation.json \\
        --model vgg16 --width 0.25 --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist \\
        --finetune-epochs 16 --limit-train-batches 0.25 --work benchmarks/work/vgg16w025_fm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsweep  # noqa: E402

from lightning_prune import ImageClassifier, surgery  # noqa: E402


def cut_to_counts(module: ImageClassifier, layers: list[dict[str, Any]]) -> None:
    """Cut each layer of a pruning summary to its kept count, dropping the filters of smallest L1 norm."""
    model = module.model
    graph = surgery.build_graph(model, surgery.example_input(model, module.plan.input_shape))
    for layer in layers:
        weight = model.get_submodule(layer["name"]).weight.detach()
        norms = weight.abs().flatten(1).sum(1)
        removed = sorted(norms.argsort()[: weight.shape[0] - layer["after"]].tolist())
        if removed:
            module.plan.steps.append(list(surgery.prune_step(model, graph, [layer["name"], True, removed])))


def retrain(args: argparse.Namespace, dm: pl.LightningDataModule, summary_path: Path) -> dict[str, Any]:
    summary = json.loads(summary_path.read_text())
    base = Path(args.work) / "baseline.ckpt"
    if not base.exists():
        raise SystemExit(
            f"{base} does not exist: pass the --work folder of the sweep whose RL run wrote {summary_path}"
        )
    pl.seed_everything(args.seed)
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu", **bsweep.finetune_overrides(args))
    cut_to_counts(module, summary["layers"])
    run = bsweep.finetune(args, dm, base, module, "rl_allocation", summary["b"], [])
    return {**run, "rl_final_macs": summary["final"]["macs"], "summary": str(summary_path), "seed": args.seed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--summary", type=Path, nargs="+", required=True, help="pruning_summary.json of RL runs")
    p.add_argument("--output", type=Path, required=True, help="results JSON")
    own, rest = p.parse_known_args(argv)
    args = bsweep.parse([*rest, "--output", str(own.output)])
    dm = bsweep.datamodule(args)
    runs = [retrain(args, dm, path) for path in own.summary]
    own.output.parent.mkdir(parents=True, exist_ok=True)
    own.output.write_text(json.dumps({"protocol": vars(args), "runs": runs}, indent=2, default=str))
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
