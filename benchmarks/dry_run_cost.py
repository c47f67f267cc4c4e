"""What the setup dry run costs: `surgery.dry_run` (one unit of every channel group cut on a copy, one forward) on
the quickstart's network and on a large torchvision model, against the quickstart's whole wall time.

    python benchmarks/dry_run_cost.py [--quickstart-seconds S] [--threads 2]

Prints one JSON object: seconds per model and, given the quickstart's measured wall time, the share it adds.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torchvision

from lightning_prune import ImageClassifier
from lightning_prune.engine import surgery


def dry_run_seconds(model: torch.nn.Module, shape: list[int]) -> dict[str, float]:
    """Seconds of the group search (done before the dry run existed too) and of the dry run itself."""
    inputs = torch.zeros(shape)
    start = time.perf_counter()
    graph = surgery.build_graph(model, inputs)
    groups = surgery.channel_groups(model, graph, inputs)
    found = time.perf_counter()
    passing, failed = surgery.dry_run(model, groups, inputs)
    done = time.perf_counter()
    return {"groups": len(groups), "failed": len(failed), "groups_s": found - start, "dry_run_s": done - found}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quickstart-seconds", type=float, help="measured wall time of the quickstart fit")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quickstart = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.25})
    result = {
        "quickstart_vgg11": dry_run_seconds(quickstart.model, [1, 1, 32, 32]),
        "densenet121_64px": dry_run_seconds(torchvision.models.densenet121(num_classes=10), [1, 3, 64, 64]),
        "threads": args.threads,
    }
    if args.quickstart_seconds:
        result["quickstart_share"] = result["quickstart_vgg11"]["dry_run_s"] / args.quickstart_seconds
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
