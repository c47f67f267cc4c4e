"""Time one agent update (K candidates scored on the same validation batches) for every layer of a CIFAR VGG.

Methods, per layer:
  naive   deep copy + dependency graph + physical prune + full forward per candidate, in the model's own
          (default) memory layout: what scoring without the engine would do.
  masked  `CandidateScorer(cache=False)`: masks by forward hooks on the live model, full forward per candidate
          (channels_last, inference mode).
  engine  `CandidateScorer(cache=True)`: cached prefix, only the mask-dependent rest per candidate.

Every candidate is timed on its own, the methods interleaved candidate by candidate (the machine is shared:
they see the same load), and a method's time for one update is K x its median candidate time (the median
resists bursts of other load). Masked and engine score the K candidates `--repeats` times, each time with a
fresh scorer, naive once (it is by far the slowest). The engine's one-time setup per layer (trace +
prefix over the batches) is reported separately and amortized over `--updates` agent updates (the callback's
`agent_updates`) in the per-update totals. `bound_ratio` is the engine's candidate time over the time the
suffix needs at the dense throughput of this run: suffix MACs (convolutions and linear layers after the cut,
at full width) x samples x K / (full-model MACs x samples / median time of a plain channels_last forward,
timed at the start and after every layer). Inputs are random: only time matters, and every method must report the
same accuracies (`max_accuracy_difference`).

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/search_speed.py                # full width VGG-16
    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/search_speed.py --width 0.25 --methods masked engine
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from statistics import median

import torch
from torch import nn

from lightning_prune.engine import surgery
from lightning_prune.engine.scoring import CandidateScorer
from lightning_prune.engine.split import split_before
from lightning_prune.search.agents import LayerSearch
from lightning_prune.search.floors import min_keep_count
from lightning_prune.zoo.models import build_model

Batch = tuple[torch.Tensor, torch.Tensor]


def count_macs(run: Callable[[], object], model: nn.Module) -> int:
    """Multiply-accumulates of the convolutions and linear layers of `model` that `run()` calls."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += output.numel() * per_output

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            run()
    finally:
        for h in hooks:
            h.remove()
    return total


def correct_count(model: nn.Module, batches: Sequence[Batch], channels_last: bool = False) -> int:
    correct = 0
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(-1) == y).sum())
    return correct


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1e3, result


def dense_times_ms(model: nn.Module, batches: Sequence[Batch], channels_last: bool, repeats: int) -> list[float]:
    """Times of `repeats` plain forwards over all batches (after one warm-up)."""
    net = copy.deepcopy(model)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        correct_count(net, batches, channels_last)
        return [timed(lambda: correct_count(net, batches, channels_last))[0] for _ in range(repeats)]


def naive_score(
    model: nn.Module, name: str, keep: torch.Tensor, batches: Sequence[Batch], example: torch.Tensor
) -> tuple[float, float]:
    """(ms, accuracy): copy the model, build its dependency graph, remove the channels, run the batches."""

    def score() -> float:
        net = copy.deepcopy(model)
        removed = (~keep).nonzero().flatten().tolist()
        if removed:
            surgery.prune_step(net, surgery.build_graph(net, example), [name, True, removed])
        with torch.inference_mode():
            return 100.0 * correct_count(net, batches) / sum(y.numel() for _, y in batches)

    return timed(score)


def scorer_score(
    model: nn.Module, maps: list, keep: torch.Tensor, batches: Sequence[Batch], cache: bool
) -> tuple[float, float, float, bool]:
    """(setup ms, scoring ms, accuracy, whether the prefix was cached) with a fresh `CandidateScorer`."""
    start = time.perf_counter()
    with CandidateScorer(model, maps, batches, cache=cache) as scorer:
        setup = (time.perf_counter() - start) * 1e3
        ms, accuracy = timed(lambda: scorer.accuracy(keep))
        return setup, ms, accuracy, scorer.cached


def suffix_macs(model: nn.Module, maps: list, example: torch.Tensor) -> int:
    """MACs per sample of the part the engine runs for each candidate (full width, nothing removed)."""
    split = split_before(model, maps)
    if split is None:
        return count_macs(lambda: model(example), model)
    with torch.inference_mode():
        values = split.prefix(example)
    return count_macs(lambda: split.suffix(*values), model)


def _rounded(row: dict) -> dict:
    def r(v: object) -> object:
        return round(v, 2) if isinstance(v, float) else [r(x) for x in v] if isinstance(v, list) else v

    return {key: r(value) for key, value in row.items()}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()
    model = build_model(args.model, num_classes=10, width=args.width).eval()
    example = torch.zeros(1, 3, 32, 32)
    inputs = [torch.randn(args.batch_size, 3, 32, 32) for _ in range(args.batches)]
    with torch.inference_mode():
        batches = [(x, model(x).argmax(-1)) for x in inputs]  # labels: the unpruned model's predictions
    samples = args.batch_size * args.batches

    full_macs = count_macs(lambda: model(example), model)
    dense = dense_times_ms(model, batches, channels_last=True, repeats=args.dense_repeats)
    dense_contiguous_ms = median(dense_times_ms(model, batches, channels_last=False, repeats=1))
    k = args.num_samples

    graph = surgery.build_graph(model, example)
    groups = surgery.select_groups(surgery.channel_groups(model, graph, example), args.layers)
    layers = []
    for group in groups:
        maps = surgery.output_channel_maps(model, graph, group.name)
        weight = model.get_submodule(group.name).weight
        masks = LayerSearch(weight, min_keep_count(0.1, group.size), seed=args.seed).sample(k)
        row: dict = {
            "name": group.name,
            "channels": group.size,
            "removed_mean": round(float((~masks).sum(1).float().mean()), 2),
            "suffix_macs": suffix_macs(model, maps, example),
        }
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        setups: dict[str, list[float]] = {m: [] for m in args.methods}
        accuracies: dict[str, list[float]] = {m: [0.0] * k for m in args.methods}
        for repeat in range(args.repeats):  # methods interleaved per candidate: they see the same load
            for i, keep in enumerate(masks):
                for method in args.methods:
                    if method == "naive":
                        if repeat == 0:
                            ms, accuracies[method][i] = naive_score(model, group.name, keep, batches, example)
                            times[method].append(ms)
                        continue
                    setup, ms, accuracies[method][i], cached = scorer_score(
                        model, maps, keep, batches, cache=method == "engine"
                    )
                    setups[method].append(setup)
                    times[method].append(ms)
                    if method == "engine":
                        row["cached"] = cached
        for method in args.methods:
            row[f"{method}_ms"] = k * median(times[method])
            row[f"{method}_candidate_ms_min_max"] = [min(times[method]), max(times[method])]
            if setups[method]:
                row[f"{method}_setup_ms"] = median(setups[method])
                row[f"{method}_update_ms"] = row[f"{method}_ms"] + row[f"{method}_setup_ms"] / args.updates
        dense += dense_times_ms(model, batches, channels_last=True, repeats=1)
        accuracies = list(accuracies.values())
        row["max_accuracy_difference"] = max(
            (max(abs(a - b) for a, b in zip(accuracies[0], other, strict=True)) for other in accuracies[1:]),
            default=0.0,
        )
        layers.append(_rounded(row))
        print(json.dumps(layers[-1]), flush=True)

    macs_per_ms = full_macs * samples / median(dense)
    for row in layers:
        row["suffix_macs_fraction"] = round(row.pop("suffix_macs") / full_macs, 4)
        row["bound_ms"] = round(row["suffix_macs_fraction"] * full_macs * samples * k / macs_per_ms, 2)
        if "engine_ms" in row:
            row["bound_ratio"] = round(row["engine_ms"] / row["bound_ms"], 3)

    def total(key: str) -> float:
        return sum(row[key] for row in layers)

    summary: dict = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "config": vars(args),
        "threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "samples": samples,
        "full_macs_per_sample": full_macs,
        "dense_ms_channels_last": round(median(dense), 2),
        "dense_ms_channels_last_min_max": [round(min(dense), 2), round(max(dense), 2)],
        "dense_ms_contiguous": round(dense_contiguous_ms, 2),
        "dense_gmacs_per_s": round(macs_per_ms / 1e6, 2),
        "layers": layers,
    }
    if "engine" in args.methods:
        summary["engine_update_ms"] = round(total("engine_update_ms"), 1)
        summary["bound_ms"] = round(total("bound_ms"), 1)
        summary["bound_ratio"] = round(total("engine_ms") / total("bound_ms"), 3)
        summary["bound_ratio_with_setup"] = round(total("engine_update_ms") / total("bound_ms"), 3)
        for method in ("naive", "masked"):
            key = "naive_ms" if method == "naive" else "masked_update_ms"
            if method in args.methods:
                summary[f"{method}_update_ms"] = round(total(key), 1)
                summary[f"speedup_vs_{method}"] = round(total(key) / total("engine_update_ms"), 2)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16", help="a built-in model name (default: vgg16)")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (default: full width)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=1, help="validation batches per candidate")
    parser.add_argument("--num-samples", type=int, default=8, help="candidates per agent update (K)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--updates", type=int, default=10, help="agent updates the engine's setup is spread over")
    parser.add_argument("--repeats", type=int, default=2, help="times masked and engine score the K candidates")
    parser.add_argument("--dense-repeats", type=int, default=3, help="dense forwards timed at the start")
    parser.add_argument("--layers", nargs="+", default=None, help="layer names or patterns (default: all)")
    parser.add_argument("--methods", nargs="+", default=["naive", "masked", "engine"])
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
