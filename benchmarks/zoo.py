"""Every torchvision classification model through the surgery, and models of every kind through the callback.

For each classification model (random weights, a small input): `candidate_groups` (graph, groups, dry run), then a
quarter of every passing group's channels (whole units) is cut, the output shape is checked, the recorded history
is replayed on a fresh model whose `load_state_dict` must then give identical outputs.

With `--callback`, each classification model sits in a user-style LightningModule (`Classifier`) and
`RLPruneCallback` (tiny search, b = 100, min_keep = 0.5) prunes it in a short `Trainer.fit` on random images of 10
classes; `--timm` does the same for small timm CNNs (`TIMM_MODELS`; needs the `zoo` extra), `--segmentation` for
the models of `torchvision.models.segmentation` (`Segmenter`, 4-class maps). Each model runs in its own process
(`--jobs` at once, killed after `--timeout` s) and reports a crash or timeout, whether its outputs after the fit are
finite (eval mode), whether the checkpoint reloads (`load_module`) with identical outputs, the MACs before and
after, the groups searched and pruned and the callback's warnings (groups left whole). One JSON line per model.

    python benchmarks/zoo.py [--models resnet18,vit_b_16] [--size 64] [--output benchmarks/results/zoo.jsonl]
    python benchmarks/zoo.py --callback [--output benchmarks/results/zoo_callback.jsonl]
    python benchmarks/zoo.py --callback --timm [--output benchmarks/results/zoo_timm.jsonl]
    python benchmarks/zoo.py --segmentation [--output benchmarks/results/zoo_segmentation.jsonl]
    python benchmarks/zoo.py --table benchmarks/results/zoo_callback.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
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


#: Models whose training-mode forward returns auxiliary logits too: a user fine-tuning them with one loss turns those
#: heads off (they run only in training, so the eval-mode trace that finds the channel groups never sees them).
_TRAIN_KWARGS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}


def _build(name: str, size: int, num_classes: int = 10, **extra: Any) -> torch.nn.Module:
    kwargs = next((make(size) for prefix, make in _KWARGS.items() if name.startswith(prefix)), {})
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs, **extra)


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


class _Fitted(pl.LightningModule):
    """What the zoo's modules share: a cross-entropy step, no validation metric, plain SGD."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Segmenter(_Fitted):
    """A torchvision segmentation model as a user wraps it: `forward` returns the `"out"` map."""

    def __init__(self, name: str, num_classes: int = 4, size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes)
        self.example_input_array = torch.zeros(1, 3, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _timm_model(name: str, num_classes: int) -> torch.nn.Module:
    import timm  # an optional extra (`pip install lightning-prune[zoo]`); checked before any run

    return timm.create_model(name, pretrained=False, num_classes=num_classes)


class Classifier(_Fitted):
    """A torchvision or timm classification model (random weights) as a user wraps their own `nn.Module`."""

    def __init__(self, name: str, source: str = "torchvision", num_classes: int = 10, size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        if source == "timm":
            self.net = _timm_model(name, num_classes)
        else:
            self.net = _build(name, size, num_classes, **_TRAIN_KWARGS.get(name, {}))
        self.example_input_array = torch.zeros(1, 3, size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: The tiny search every callback run uses: one update of two samples per group, one probe of one step; a large
#: b and min_keep=0.5 so that the probe's level (half of every group) is what the network is cut to.
_OPTIONS = {
    "num_samples": 2,
    "agent_updates": 1,
    "reward_batches": 1,
    "check_batches": 1,
    "probes": 1,
    "probe_batches": 1,
    "calibration_batches": 1,
}
#: Warnings worth keeping in a record: the callback's (groups left whole, cuts skipped, values refused).
_KEPT_WARNINGS = ("RLPruneCallback", "lightning_prune")


def fit_with_callback(
    module: pl.LightningModule, x: torch.Tensor, y: torch.Tensor, root: Path, batch_size: int = 4
) -> dict[str, Any]:
    """One short `Trainer.fit` of `module` with `RLPruneCallback` (tiny search) on `(x, y)` for training and for
    validation; then the checks: outputs finite in eval mode, the checkpoint reloads (`load_module`) with
    identical outputs, the MACs before and after."""
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    before = model_cost(module, module.example_input_array)
    callback = RLPruneCallback(b=100.0, min_keep=0.5, options=RLOptions(**_OPTIONS))
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), callbacks=[callback],
        accelerator="cpu", devices=1,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader, loader)
    after = model_cost(module, module.example_input_array)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pruned.ckpt"
    trainer.save_checkpoint(path)
    module.eval()
    probe = x[:2]
    with torch.no_grad():
        out = module(probe)
        reloaded = load_module(type(module), path).eval()(probe)
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    return {
        "groups_searched": len(callback.groups),
        "groups_pruned": len({r["name"] for r in callback.history}),
        "level": (callback.level or {}).get("ratio"),
        "macs_before": before.macs,
        "macs_after": after.macs,
        "macs_removed": before.macs - after.macs,
        "output_shape": list(out.shape),
        "non_finite": not bool(torch.isfinite(out).all()),
        "reload_identical": bool(torch.equal(out, reloaded)),
        "warnings": [m[:600] for m in messages if any(k in m for k in _KEPT_WARNINGS)],
    }


def _record(name: str, size: int, fit: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    record: dict[str, Any] = {"model": name, "input": size, "timeout": False}
    try:
        record.update(fit(), crash=None)
    except Exception as err:  # noqa: BLE001 - a crash is a result here
        record.update(crash=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc()[-3000:])
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def run_segmentation(name: str, size: int = 64, root: Path = Path("/tmp/zoo_segmentation")) -> dict[str, Any]:
    """One short fit of `Segmenter(name)` with `RLPruneCallback` on random images and 4-class maps."""

    def fit() -> dict[str, Any]:
        torch.manual_seed(0)
        module = Segmenter(name, size=size)
        x = torch.randn(8, 3, size, size)
        y = torch.randint(0, 4, (8, size, size))
        result = fit_with_callback(module, x, y, root / name)
        return {**result, "output_shape_ok": result["output_shape"] == [2, 4, size, size]}

    return _record(name, size, fit)


def run_callback(
    name: str, size: int = 64, source: str = "torchvision", root: Path = Path("/tmp/zoo_callback")
) -> dict[str, Any]:
    """One short fit of `Classifier(name)` with `RLPruneCallback` on random images of 10 classes."""
    size = _SIZES.get(name, size) if source == "torchvision" else size

    def fit() -> dict[str, Any]:
        torch.manual_seed(0)
        module = Classifier(name, source, size=size)
        x = torch.randn(8, 3, size, size)
        y = torch.randint(0, 10, (8,))
        result = fit_with_callback(module, x, y, root / source / name)
        return {**result, "output_shape_ok": result["output_shape"] == [2, 10]}

    return {"source": source, **_record(name, size, fit)}


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of zoo records (surgery records, or the callback's when they have `groups_searched`)."""
    if any("groups_searched" in r or r.get("timeout") is not None for r in rows):
        return callback_table(rows)
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


def _cell(text: str, width: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 3] + "..."


def callback_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of callback records: groups pruned of searched, MACs removed, the checks, warnings."""
    lines = [
        "| model | input | groups pruned / searched | MACs removed | finite | same on reload | warnings (first) | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r.get('input', '')} |"
        if r.get("timeout"):
            lines.append(f"{head} timeout | | | | | {r['seconds']} |")
            continue
        if r.get("crash"):
            what = "refused" if _refused(r) else "crash"
            lines.append(f"{head} {what}: {_cell(r['crash'])} | | | | | {r['seconds']} |")
            continue
        removed = 100 * r["macs_removed"] / r["macs_before"] if r["macs_before"] else 0.0
        finite = "NO" if r["non_finite"] else "yes"
        same = "yes" if r["reload_identical"] else "NO"
        warned = r.get("warnings") or []
        first = f"{len(warned)}: {_cell(warned[0])}" if warned else "0"
        lines.append(
            f"{head} {r['groups_pruned']} / {r['groups_searched']} | {removed:.1f} % | {finite} | {same} | {first} "
            f"| {r['seconds']} |"
        )
    return "\n".join(lines)


def _refused(record: dict[str, Any]) -> bool:
    """Whether the callback refused the model at setup with its own clear error (not a crash)."""
    return (record.get("crash") or "").startswith("MisconfigurationException")


def callback_counts(rows: list[dict[str, Any]]) -> str:
    """One line of counts over callback records: crashes, timeouts, non-finite outputs, identical reloads, MACs."""
    ran = [r for r in rows if not r.get("crash") and not r.get("timeout")]
    pruned = sorted(100 * r["macs_removed"] / r["macs_before"] for r in ran if r["groups_pruned"] and r["macs_before"])
    median = statistics.median(pruned) if pruned else 0.0
    span = f"{pruned[0]:.1f}-{pruned[-1]:.1f} %" if pruned else "-"
    refused = sum(_refused(r) for r in rows)
    return (
        f"{len(rows)} models: {sum(bool(r.get('crash')) for r in rows) - refused} crashes, {refused} refused at setup "
        "(MisconfigurationException: nothing prunable, or not traceable), "
        f"{sum(bool(r.get('timeout')) for r in rows)} timeouts, {sum(r['non_finite'] for r in ran)} non-finite, "
        f"{sum(r['reload_identical'] for r in ran)} of {len(ran)} reload identical; {len(pruned)} pruned, MACs "
        f"removed median {median:.1f} % (range {span}); {sum(not r['groups_pruned'] for r in ran)} with nothing cut"
    )


#: Small timm CNNs, one or two per family (`--timm`): random weights, never downloaded.
TIMM_MODELS = [
    "resnet18", "resnext26ts", "regnetx_002", "regnety_002", "efficientnet_b0", "mobilenetv3_small_050",
    "mnasnet_small", "ghostnet_050", "mixnet_s", "res2net50_14w_8s", "convnext_atto", "convnext_nano",
    "densenet121", "dla46_c", "hrnet_w18_small", "rexnet_100", "cspresnet50", "dpn68", "ese_vovnet19b_dw",
    "repvgg_a0",
]  # fmt: skip


def _worker(mode: str, name: str, size: int) -> dict[str, Any]:
    if mode == "segmentation":
        return run_segmentation(name, size)
    return run_callback(name, size, source="timm" if mode == "timm" else "torchvision")


def run_isolated(mode: str, name: str, size: int, timeout: float) -> dict[str, Any]:
    """`_worker(mode, name, size)` in its own Python process (one torch thread), killed after `timeout` s."""
    start = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--models", name, "--size", str(size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "timeout": True, "crash": None, "seconds": round(time.perf_counter() - start, 2)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {
        "model": name,
        "timeout": False,
        "crash": f"process exited with {done.returncode}: {done.stderr[-1500:]}",
        "seconds": round(time.perf_counter() - start, 2),
    }


def _timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: every model of the mode)")
    parser.add_argument("--size", type=int, default=64, help="input height and width")
    parser.add_argument("--fraction", type=float, default=0.25, help="share of each group's units to cut")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON lines here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--segmentation", action="store_true", help="the segmentation models, through the callback")
    parser.add_argument("--callback", action="store_true", help="the classification models, through the callback")
    parser.add_argument("--timm", action="store_true", help="with --callback: timm CNNs (pip install timm)")
    parser.add_argument("--jobs", type=int, default=2, help="models run at once, each in its own process")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it is killed")
    parser.add_argument("--worker", choices=["segmentation", "callback", "timm"], help=argparse.SUPPRESS)
    parser.add_argument("--table", type=Path, nargs="+", help="print a markdown table of these JSON-lines files")
    args = parser.parse_args(argv)
    if args.table:
        rows = [json.loads(line) for path in args.table for line in path.read_text().splitlines() if line]
        print(table(rows))
        if any("groups_searched" in r or r.get("timeout") is not None for r in rows):
            print("\n" + callback_counts(rows))
        return 0
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    if args.worker:
        print(json.dumps(_worker(args.worker, args.models, args.size)), flush=True)
        return 0
    if args.timm and not args.callback:
        parser.error("--timm runs through the callback: pass --callback --timm")
    if args.timm and not _timm_available():
        print("zoo.py --timm needs timm, an optional extra: pip install 'lightning-prune[zoo]' (or pip install timm)")
        return 2
    if args.timm:
        mode, names = "timm", TIMM_MODELS
    else:
        mode = "segmentation" if args.segmentation else "callback" if args.callback else None
        module = torchvision.models.segmentation if args.segmentation else torchvision.models
        names = torchvision.models.list_models(module=module)
    names = args.models.split(",") if args.models else names
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("")

    def emit(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if args.output:
            with args.output.open("a") as f:
                f.write(line + "\n")

    if mode is None:
        for name in names:
            emit(run_model(name, args.size, args.fraction))
        return 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_isolated, mode, name, args.size, args.timeout) for name in names]
        for future in as_completed(futures):
            emit(future.result())
    if args.output:  # in the models' order, whatever order they finished in
        records = {r["model"]: r for r in map(json.loads, args.output.read_text().splitlines())}
        args.output.write_text("".join(json.dumps(records[n]) + "\n" for n in names if n in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
