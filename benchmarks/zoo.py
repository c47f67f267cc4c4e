"""Every torchvision classification model through the surgery: groups, dry run, one cut per group, reload.

For each model (random weights, a small input): `candidate_groups` (graph, groups, dry run), then a quarter of
every passing group's channels (whole units) is cut, the output shape is checked, the recorded history is
replayed on a fresh model whose `load_state_dict` must then give identical outputs. One JSON line per model.

    python benchmarks/zoo.py [--models resnet18,vit_b_16] [--size 64] [--output benchmarks/results/zoo.json]
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

import torch
import torchvision

from lightning_prune import surgery
from lightning_prune.measure import model_cost
from lightning_prune.models import build_model

#: Models that need a larger input or a constructor argument to run at a small size.
_SIZES = {"inception_v3": 96, "maxvit_t": 224}
_KWARGS = {"vit_": lambda size: {"image_size": size}}


def _build(name: str, size: int) -> torch.nn.Module:
    kwargs = next((make(size) for prefix, make in _KWARGS.items() if name.startswith(prefix)), {})
    torch.manual_seed(0)
    return build_model(name, num_classes=10, **kwargs)


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
        graph = surgery.build_graph(model, x)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: every classification model)")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each group's units to cut")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("")
    for name in names:
        line = json.dumps(run_model(name, args.size, args.fraction))
        print(line, flush=True)
        if args.output:
            with args.output.open("a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
