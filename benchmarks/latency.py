"""Inference latency of an original and a pruned model: median of repeated forwards at fixed thread count.

The pruned model comes from a checkpoint written by a pruning run (`ImageClassifier.load_from_checkpoint`
replays its pruning plan); the original is the same architecture built unpruned from the checkpoint's
hyper-parameters. Without a checkpoint, `--demo` removes the same fraction of filters (lowest L1 norm) from every
convolution of a VGG-16 with torch-pruning. Prints JSON with the MACs ratio (original / pruned) and the measured
speedup per batch size and memory layout.

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/latency.py --checkpoint path/to/last.ckpt
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/latency.py --demo --ratio 0.5
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.engine.cost import latency_ms, model_cost
from lightning_prune.zoo.models import build_model
from lightning_prune.zoo.module import ImageClassifier


def from_checkpoint(path: str) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(original, pruned, input shape) of a pruning run's checkpoint."""
    module = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    original = ImageClassifier(**module.hparams)
    return original.model, module.model, tuple(module.plan.input_shape[1:])


def demo(model_name: str, width: float, ratio: float) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    """(original, pruned, input shape): every convolution loses `ratio` of its filters, lowest L1 norm first."""
    original = build_model(model_name, num_classes=10, width=width).eval()
    pruned = copy.deepcopy(original)
    example = torch.zeros(1, 3, 32, 32)
    head = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(
        pruned,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        root_module_types=[nn.Conv2d],
        ignored_layers=[head],
    )
    pruner.step()
    return original, pruned.eval(), (3, 32, 32)


def measure(
    original: nn.Module,
    pruned: nn.Module,
    shape: tuple[int, ...],
    batch_sizes: Sequence[int],
    layouts: Sequence[str],
    repeats: int,
    warmup: int,
) -> list[dict]:
    rows = []
    for layout in layouts:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        nets = [copy.deepcopy(m).eval().to(memory_format=fmt) for m in (original, pruned)]
        for batch in batch_sizes:
            x = torch.randn(batch, *shape).contiguous(memory_format=fmt)
            original_ms, pruned_ms = (latency_ms(net, x, repeats=repeats, warmup=warmup) for net in nets)
            rows.append(
                {
                    "batch_size": batch,
                    "layout": layout,
                    "original_ms": round(original_ms, 3),
                    "pruned_ms": round(pruned_ms, 3),
                    "speedup": round(original_ms / pruned_ms, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()
    if args.checkpoint:
        original, pruned, shape = from_checkpoint(args.checkpoint)
    else:
        original, pruned, shape = demo(args.model, args.width, args.ratio)
    example = torch.zeros(1, *shape)
    cost_original, cost_pruned = model_cost(original, example), model_cost(pruned, example)
    macs_ratio = cost_original.macs / cost_pruned.macs
    rows = measure(original, pruned, shape, args.batch_sizes, args.layouts, args.repeats, args.warmup)
    for row in rows:
        row["speedup_over_macs_ratio"] = round(row["speedup"] / macs_ratio, 3)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "config": vars(args),
        "threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "original": cost_original.as_dict(),
        "pruned": cost_pruned.as_dict(),
        "macs_ratio": round(macs_ratio, 3),
        "results": rows,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint of a pruning run (ImageClassifier)")
    source.add_argument("--demo", action="store_true", help="prune a VGG by a uniform L1 ratio instead")
    parser.add_argument("--model", default="vgg16", help="--demo: built-in model name (default: vgg16)")
    parser.add_argument("--width", type=float, default=1.0, help="--demo: channel multiplier")
    parser.add_argument("--ratio", type=float, default=0.5, help="--demo: fraction of filters removed per layer")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    layouts = ["contiguous", "channels_last"]
    parser.add_argument("--layouts", nargs="+", choices=layouts, default=layouts, help="memory layouts to time")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards; the median is reported")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    summary = run(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
