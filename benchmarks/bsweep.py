"""b-sweep: RLPruneCallback at several accuracy budgets b against rule-based pruning.

One baseline is trained (or loaded) once and kept in `--work` (`baseline.ckpt`; the same command and seed rebuild it);
every method then starts from that checkpoint and gets the same fine-tuning budget (`--finetune-epochs` epochs on
`--limit-train-batches` of the training set). RL runs are `RLPruneCallback(b)` with its defaults, its search and
probes at `--start-epoch` inside that budget (CPU times: `search_cpu_s`, `probe_cpu_s`, and `fit_cpu_s` for the whole
run). Rule-based methods (L1-norm ranking with a uniform per-layer ratio, random filters, torch-pruning's global
magnitude ranking) prune once, to the MACs the RL run at the same b reached, and fine-tune for the whole budget; the
RL-Pruner mode (`DistributionPruneCallback`) gets that MACs reduction as its target, reached in `--distribution-steps`
steps. `--macs-targets` runs the methods at given MACs reductions without an RL run (recorded with `b` null): with
`--methods l1_uniform` that is the L1-uniform frontier the report reads RL against (the MACs a uniform ratio removes
at a drop <= b, interpolated). With `--distill-weight`, the baseline teaches every method's network while it fine-
tunes. The reward uses the validation split held out from the training data; the reported accuracy is the final
epoch's test accuracy; params and MACs come from one counter (`engine.cost.model_cost`); every run records
its seed, search time and fit wall time.

Each finished run is written to the results JSON as it completes and skipped on a rerun, so a sweep can span
several sittings; `--merge` joins the results files of sweeps of one baseline side by side (one per seed, say).
The recorded CPU sweep (the complete Fashion-MNIST; one thread per process, two processes at a time):

    C="--model vgg16 --width 0.25 --dataset fashion-mnist --data-dir ../shared/data/fashion-mnist \\
       --baseline-epochs 15 --finetune-epochs 16 --limit-train-batches 0.25 --work benchmarks/work/vgg16w025_fm"
    python benchmarks/bsweep.py $C --b 1 0.5 2 --methods --seed 0 \\
        --output benchmarks/results/vgg16w025_fashion_mnist_defaults_s0.json       # also --seed 1, --seed 2
    python benchmarks/bsweep.py $C --b --methods l1_uniform --macs-targets 0.3 0.45 0.6 0.7 0.8 0.9 \\
        --output benchmarks/results/vgg16w025_fashion_mnist_frontier.json
    python benchmarks/bsweep.py --merge benchmarks/results/vgg16w025_fashion_mnist_{defaults_s0,defaults_s1,\\
        defaults_s2,frontier}.json --output benchmarks/results/vgg16w025_fashion_mnist_defaults.json
    python benchmarks/bsweep.py --report benchmarks/results/vgg16w025_fashion_mnist_defaults.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch_pruning as tp

from lightning_prune import DistributionPruneCallback, ImageClassifier, RLPruneCallback
from lightning_prune.callbacks.distillation import Distiller
from lightning_prune.callbacks.options import is_min_keep
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import latency_ms, model_cost
from lightning_prune.zoo.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    EmbeddedFashionMNISTDataModule,
    FashionMNISTDataModule,
)

RULE_BASED = ("l1_uniform", "random", "magnitude_global")
MATCHED = (*RULE_BASED, "distribution")


def datamodule(args: argparse.Namespace) -> pl.LightningDataModule:
    common = {"batch_size": args.batch_size, "seed": args.split_seed}
    if args.dataset == "embedded":
        return EmbeddedFashionMNISTDataModule(**common)
    cls = {"fashion-mnist": FashionMNISTDataModule, "cifar10": CIFAR10DataModule, "cifar100": CIFAR100DataModule}
    return cls[args.dataset](data_dir=args.data_dir, **common)


def trainer(
    args: argparse.Namespace, epochs: int, callbacks: list, name: str, limit_train_batches: float = 1.0
) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=args.accelerator,
        precision=args.precision,
        callbacks=callbacks,
        logger=pl.loggers.CSVLogger(args.work, name=name),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=limit_train_batches,
        num_sanity_val_steps=0,
    )


def measure(module: ImageClassifier, args: argparse.Namespace) -> dict[str, Any]:
    model = module.model.cpu()
    x = surgery.example_input(model, module.plan.input_shape)
    cost = model_cost(model, x)
    with torch.no_grad():
        latency = latency_ms(model, x.repeat(64, 1, 1, 1), repeats=args.latency_repeats)
    return {"macs": cost.macs, "params": cost.params, "latency_ms": latency}


def finetune_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"lr": args.finetune_lr, "channels_last": args.channels_last}


def finetune(
    args: argparse.Namespace,
    dm: pl.LightningDataModule,
    base: Path,
    module: ImageClassifier,
    method: str,
    b: float | None,
    callbacks: list,
) -> dict[str, Any]:
    """Fine-tune `module` for the sweep's budget, then its final test accuracy and measurements. With
    `--distill-weight`, the baseline teaches every method's network while it fine-tunes, pruned before or during."""
    if args.distill_weight:
        teacher = ImageClassifier.load_from_checkpoint(base, map_location="cpu").model
        module.distiller = Distiller(teacher, args.distill_temperature, args.distill_weight)
    t = trainer(args, args.finetune_epochs, callbacks, f"{method}_b{b}", args.limit_train_batches)
    start, cpu = time.perf_counter(), time.process_time()
    t.fit(module, datamodule=dm)
    fit = {"fit_s": time.perf_counter() - start, "fit_cpu_s": time.process_time() - cpu}
    return {"method": method, "b": b, "test_acc": test_accuracy(t, module, dm), **fit, **measure(module, args)}


def test_accuracy(t: pl.Trainer, module: ImageClassifier, dm: pl.LightningDataModule) -> float:
    return float(t.test(module, datamodule=dm, verbose=False)[0]["test_acc"])


def train_baseline(args: argparse.Namespace, dm: pl.LightningDataModule, path: Path) -> dict[str, Any]:
    if not path.exists():
        pl.seed_everything(args.seed)
        module = ImageClassifier(
            args.model,
            num_classes=dm.num_classes,
            in_channels=dm.in_channels,
            model_kwargs={"width": args.width},
            lr=args.lr,
            channels_last=args.channels_last,
        )
        t = trainer(args, args.baseline_epochs, [], "baseline")
        t.fit(module, datamodule=dm)
        t.save_checkpoint(path)
    module = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
    acc = test_accuracy(trainer(args, 1, [], "baseline_test"), module, dm)
    return {"test_acc": acc, **{k: v for k, v in measure(module, args).items() if k != "latency_ms"}}


class SearchTimer:
    """Mixin for a pruning callback: adds up the wall time and the process CPU time of its pruning points (search,
    surgery, measurements). With one thread per process the CPU time is what the work costs, however loaded the
    machine."""

    search_s = 0.0
    search_cpu_s = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        super().on_train_epoch_start(trainer, pl_module)
        self.search_s += time.perf_counter() - start
        self.search_cpu_s += time.process_time() - cpu


class TimedRLPrune(SearchTimer, RLPruneCallback):
    """Also adds up the process CPU time of the level controller's probes (part of `search_cpu_s`)."""

    probe_cpu_s = 0.0

    def _probe(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        cpu = time.process_time()
        probe = super()._probe(*args, **kwargs)
        self.probe_cpu_s += time.process_time() - cpu
        return probe


class TimedDistributionPrune(SearchTimer, DistributionPruneCallback):
    pass


def run_rl(args: argparse.Namespace, dm: pl.LightningDataModule, base: Path, b: float) -> dict[str, Any]:
    """`RLPruneCallback(b)` with its defaults, from the baseline, inside the sweep's fine-tuning budget."""
    pl.seed_everything(args.seed)
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu", **finetune_overrides(args))
    callback = TimedRLPrune(b=b, start_epoch=args.start_epoch, min_keep=args.min_keep, seed=args.seed)
    run = finetune(args, dm, base, module, "rl", b, [callback])
    summary = {"probes": callback.probes, "level": callback.level, "dense_check": _mean(callback.dense)}
    times = {"search_cpu_s": callback.search_cpu_s - callback.probe_cpu_s, "probe_cpu_s": callback.probe_cpu_s}
    return {**run, "search_s": callback.search_s, **times, **summary}


def prune_rule_based(module: ImageClassifier, method: str, ratio: float, seed: int) -> None:
    """Prune `module.model` once with a torch-pruning rule at `ratio`, recording the steps in its plan."""
    model = module.model
    x = surgery.example_input(model, module.plan.input_shape)
    graph = surgery.build_graph(model, x)
    groups = surgery.channel_groups(model, graph, x)
    prunable = {m for g in groups for m in g.members}
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    ignored = [m for n, m in model.named_modules() if isinstance(m, layers) and n not in prunable]
    torch.manual_seed(seed)
    importance = {
        "l1_uniform": tp.importance.MagnitudeImportance(p=1),
        "random": tp.importance.RandomImportance(),
        "magnitude_global": tp.importance.MagnitudeImportance(p=2),
    }[method]
    with surgery.preserved_modes(model):  # tracing the dependency graph switches the model to eval mode
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=importance,
            global_pruning=method == "magnitude_global",
            pruning_ratio=ratio,
            max_pruning_ratio=0.95,
            ignored_layers=ignored,
        )
        pruner.step()
    if module.channels_last:
        model.to(memory_format=torch.channels_last)
    module.plan.steps.extend([list(s) for s in pruner.DG.pruning_history()])


def match_macs(base: Path, method: str, target_macs: int, seed: int) -> float:
    """The pruning ratio at which `method` comes closest to `target_macs` (bisection; stops within 1%)."""
    low, high, best = 0.0, 0.95, (float("inf"), 0.0)
    for _ in range(14):
        mid = (low + high) / 2
        module = ImageClassifier.load_from_checkpoint(base, map_location="cpu")
        prune_rule_based(module, method, mid, seed)
        macs = model_cost(module.model, surgery.example_input(module.model, module.plan.input_shape)).macs
        best = min(best, (abs(macs - target_macs), mid))
        if best[0] <= 0.01 * target_macs:
            break
        low, high = (mid, high) if macs > target_macs else (low, mid)
    return best[1]


def run_rule_based(
    args: argparse.Namespace, dm: pl.LightningDataModule, base: Path, method: str, b: float | None, target_macs: int
) -> dict[str, Any]:
    ratio = match_macs(base, method, target_macs, args.seed)
    pl.seed_everything(args.seed)
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu", **finetune_overrides(args))
    start = time.perf_counter()
    prune_rule_based(module, method, ratio, args.seed)
    search_s = time.perf_counter() - start
    return {**finetune(args, dm, base, module, method, b, []), "ratio": ratio, "search_s": search_s}


def run_distribution(
    args: argparse.Namespace, dm: pl.LightningDataModule, base: Path, b: float | None, target_macs: int, base_macs: int
) -> dict[str, Any]:
    """RL-Pruner mode with a MACs target equal to the reduction the RL run at the same b reached."""
    pl.seed_everything(args.seed)
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu", **finetune_overrides(args))
    steps = args.distribution_steps
    target = 1 - target_macs / base_macs
    callback = TimedDistributionPrune(
        target=target,
        target_type="macs",
        step_size=target / steps,
        start_epoch=0,
        finetune_epochs=max(1, args.finetune_epochs // (steps + 1)),
        seed=args.seed,
    )
    return {**finetune(args, dm, base, module, "distribution", b, [callback]), "search_s": callback.search_s}


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    dm = datamodule(args)
    base = Path(args.work) / "baseline.ckpt"
    results.setdefault("model", f"{args.model} (width {args.width})")
    results.setdefault("dataset", args.dataset)
    results.setdefault("protocol", vars(args))
    if results.setdefault("split_seed", args.split_seed) != args.split_seed:
        raise SystemExit(
            f"{out} was made with --split-seed {results['split_seed']}, not {args.split_seed}: the baseline was "
            "trained on that split, so another split would score rewards on its training images. Rerun with "
            f"--split-seed {results['split_seed']}, or pass a new --output and --work."
        )
    if "baseline" not in results:
        results["baseline"] = train_baseline(args, dm, base)
        out.write_text(json.dumps(results, indent=2))
    runs = results.setdefault("runs", [])

    def done(method: str, b: float | None, macs_target: float | None = None) -> dict[str, Any] | None:
        same = (r for r in runs if r["method"] == method and r["b"] == b and r["seed"] == args.seed)
        return next((r for r in same if r.get("macs_target") == macs_target), None)

    def save(run: dict[str, Any]) -> None:
        runs.append({**run, "seed": args.seed})
        out.write_text(json.dumps(results, indent=2))

    for b in args.b:
        if done("rl", b) is None:
            save(run_rl(args, dm, base, b))
        rl = done("rl", b)
        if rl["macs"] >= results["baseline"]["macs"]:
            print(f"b={b}: the RL run removed nothing, so there is no MACs target to match; matched runs skipped")
            continue
        for method in args.methods:
            if done(method, b) is None:
                save(run_matched(args, dm, base, method, b, rl["macs"], results["baseline"]["macs"]))
    for reduction in args.macs_targets:
        target_macs = round((1 - reduction) * results["baseline"]["macs"])
        for method in args.methods:
            if done(method, None, reduction) is None:
                run = run_matched(args, dm, base, method, None, target_macs, results["baseline"]["macs"])
                save({**run, "macs_target": reduction})
    return results


def run_matched(
    args: argparse.Namespace,
    dm: pl.LightningDataModule,
    base: Path,
    method: str,
    b: float | None,
    target_macs: int,
    base_macs: int,
) -> dict[str, Any]:
    """A non-RL method pruned to `target_macs`, then fine-tuned with the sweep's budget."""
    if method == "distribution":
        return run_distribution(args, dm, base, b, target_macs, base_macs)
    return run_rule_based(args, dm, base, method, b, target_macs)


def margins(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per b with RL runs: each seed's MACs removed and test-accuracy drop, and RL's test accuracy minus each
    method's pruned to that run's MACs (same b and seed), as lists in seed order."""
    base, runs = results["baseline"], results["runs"]
    rows = []
    for b in sorted({r["b"] for r in runs if r["method"] == "rl"}):
        rl = sorted((r for r in runs if r["method"] == "rl" and r["b"] == b), key=lambda r: r["seed"])
        row: dict[str, Any] = {
            "b": b,
            "seeds": [r["seed"] for r in rl],
            "macs_removed": [100 * (1 - r["macs"] / base["macs"]) for r in rl],
            "drop": [base["test_acc"] - r["test_acc"] for r in rl],
            "rl_minus": {},
        }
        for method in dict.fromkeys(r["method"] for r in runs if r["method"] != "rl" and r["b"] == b):
            matched = {r["seed"]: r["test_acc"] for r in runs if r["method"] == method and r["b"] == b}
            if all(r["seed"] in matched for r in rl):
                row["rl_minus"][method] = [r["test_acc"] - matched[r["seed"]] for r in rl]
        rows.append(row)
    return rows


def frontier(results: dict[str, Any], method: str = "l1_uniform") -> list[tuple[float, float, float]]:
    """`method`'s runs at fixed MACs targets (`--macs-targets`) as (MACs removed %, test drop, fit CPU s), the
    mean over seeds per target, by MACs removed."""
    base, points = results["baseline"], {}
    for r in results["runs"]:
        if r["method"] == method and r.get("macs_target") is not None:
            macs = 100 * (1 - r["macs"] / base["macs"])
            points.setdefault(r["macs_target"], []).append((macs, base["test_acc"] - r["test_acc"], r.get("fit_cpu_s")))
    rows = []
    for runs in points.values():
        walls = [w for _, _, w in runs if w is not None]
        rows.append((_mean([m for m, _, _ in runs]), _mean([d for _, d, _ in runs]), _mean(walls) if walls else 0.0))
    return sorted(rows)


def frontier_at(points: list[tuple[float, ...]], b: float) -> float | None:
    """The most MACs removed (%) at a drop <= `b` along `points` (MACs removed, drop, ...), interpolated linearly
    where the drop crosses `b` between two neighbours; None when every point drops more than `b`."""
    best = None
    for i, (macs, drop, *_) in enumerate(points):
        if drop <= b:
            best = max(best or macs, macs)
            if i + 1 < len(points) and points[i + 1][1] > b:
                nxt_macs, nxt_drop = points[i + 1][0], points[i + 1][1]
                best = max(best, macs + (b - drop) * (nxt_macs - macs) / (nxt_drop - drop))
    return best


def budget_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per b with RL runs: RL's MACs removed, test drop (mean and worst), predicted drop and whole-run CPU time
    split into search, probes and the rest (means over seeds), beside the L1-uniform frontier's MACs removed at
    drop <= b and the CPU time of its run nearest that size."""
    base, line = results["baseline"], frontier(results)
    rows = []
    for b in sorted({r["b"] for r in results["runs"] if r["method"] == "rl"}):
        rl = [r for r in results["runs"] if r["method"] == "rl" and r["b"] == b]
        drops = [base["test_acc"] - r["test_acc"] for r in rl]
        reach = frontier_at(line, b) if line else None
        nearest = min(line, key=lambda p: abs(p[0] - reach))[2] if reach is not None else None
        rows.append(
            {
                "b": b,
                "seeds": sorted(r["seed"] for r in rl),
                "macs_removed": _mean([100 * (1 - r["macs"] / base["macs"]) for r in rl]),
                "drop": _mean(drops),
                "worst_drop": max(drops),
                "predicted": _mean([r["level"]["predicted"] for r in rl]) if all("level" in r for r in rl) else None,
                "search_cpu_s": _mean([r["search_cpu_s"] for r in rl]),
                "probe_cpu_s": _mean([r.get("probe_cpu_s", 0.0) for r in rl]),
                "fit_cpu_s": _mean([r["fit_cpu_s"] for r in rl]),
                "frontier_macs_removed": reach,
                "frontier_cpu_s": nearest,
            }
        )
    return rows


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _run_order(r: dict[str, Any]) -> tuple:
    """Runs by b (MACs-target runs last), MACs target, seed, RL first."""
    return r["b"] is None, r["b"] or 0, r.get("macs_target") or 0, r["seed"], r["method"] != "rl"


def merge(paths: list[Path]) -> dict[str, Any]:
    """One results dict of the runs of several sweeps of one baseline (e.g. one process per b, which cannot share
    an output file). The protocol is the first file's, without the flags that differ per run (each run records its
    b and seed)."""
    merged = json.loads(paths[0].read_text())
    for key in ("b", "seed", "output"):
        merged["protocol"].pop(key, None)
    merged["merged_from"] = [str(p) for p in paths]
    runs = merged.setdefault("runs", [])  # a sweep stopped before its first run finished has none
    seen = {(r["method"], r["b"], r["seed"], r.get("macs_target")) for r in runs}
    for path in paths[1:]:
        other = json.loads(path.read_text())
        for key in ("model", "dataset", "split_seed", "baseline"):
            if other[key] != merged[key]:
                raise SystemExit(
                    f"{path} has {key} {other[key]!r}, {paths[0]} has {merged[key]!r}: only sweeps of one "
                    "baseline checkpoint (same --work) can be merged."
                )
        for run in other.get("runs", []):
            key = (run["method"], run["b"], run["seed"], run.get("macs_target"))
            if key in seen:
                raise SystemExit(f"{path} repeats the run {key} (method, b, seed, MACs target): merge each run once.")
            seen.add(key)
            runs.append(run)
    runs.sort(key=_run_order)
    return merged


def _cell(values: list[float], spec: str = "+.2f") -> str:
    """The mean of `values` formatted by `spec`, followed by the values themselves when there are several."""
    mean = format(sum(values) / len(values), spec)
    return mean if len(values) == 1 else f"{mean} ({', '.join(format(v, spec) for v in values)})"


def report(path: Path) -> str:
    """Markdown tables (every run; RL's margins per b) and an accuracy-vs-MACs plot (PNG beside the JSON) of a
    results file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(path.read_text())
    base = results["baseline"]
    lines = [
        f"Model {results['model']}, dataset {results['dataset']}; baseline test acc {base['test_acc']:.2f}, "
        f"{base['macs'] / 1e6:.1f} M MACs, {base['params'] / 1e6:.2f} M params.",
        "",
        "| method | b | seed | test acc | drop | MACs (M) | MACs removed | params (M) | latency (ms) | search (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in results["runs"]):
        rows = sorted((r for r in results["runs"] if r["method"] == method), key=lambda r: r["macs"])
        style = "o" if method == "rl" else "o-"  # RL: one point per run, the seeds of a b scatter
        ax.plot([r["macs"] / 1e6 for r in rows], [r["test_acc"] for r in rows], style, label=method)
        if method == "rl":
            for r in rows:
                ax.annotate(
                    f"b={r['b']:g}",
                    (r["macs"] / 1e6, r["test_acc"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )

    for r in sorted(results["runs"], key=_run_order):
        b = "-" if r["b"] is None else r["b"]
        lines.append(
            f"| {r['method']} | {b} | {r['seed']} | {r['test_acc']:.2f} | {base['test_acc'] - r['test_acc']:.2f} | "
            f"{r['macs'] / 1e6:.1f} | {100 * (1 - r['macs'] / base['macs']):.1f}% | {r['params'] / 1e6:.2f} | "
            f"{r['latency_ms']:.1f} | {r['search_s']:.0f} |"
        )
    ax.axhline(base["test_acc"], color="gray", linestyle="--", label="unpruned")
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("final test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=120)
    summary = margins(results)
    methods = list(dict.fromkeys(m for row in summary for m in row["rl_minus"]))
    if methods:
        lines += [
            "",
            "RL per b, the mean over seeds (each seed in brackets): MACs removed, test-accuracy drop, and RL's test "
            "accuracy minus each method's at the same MACs (positive: RL ahead).",
            "",
            "| b | seeds | MACs removed (%) | drop | " + " | ".join(f"RL - {m}" for m in methods) + " |",
            "|---" * (4 + len(methods)) + "|",
        ]
        for row in summary:
            cells = [_cell(row["rl_minus"][m]) if m in row["rl_minus"] else "" for m in methods]
            seeds = ", ".join(map(str, row["seeds"]))
            lines.append(
                f"| {row['b']} | {seeds} | {_cell(row['macs_removed'], '.1f')} | {_cell(row['drop'], '.2f')} | "
                + " | ".join(cells)
                + " |"
            )
    if frontier(results):
        lines += ["", *frontier_table(results)]
    lines += ["", f"![accuracy vs MACs]({png.name})"]
    return "\n".join(lines)


def frontier_table(results: dict[str, Any]) -> list[str]:
    """Markdown: per b, RL (means over seeds) beside the L1-uniform frontier (uniform ratios at fixed MACs
    targets, the same fine-tuning): its MACs removed at drop <= b, interpolated, and the CPU time of its run
    nearest that size; CPU times are whole runs (RL: search + probes + fine-tuning)."""
    lines = [
        "| b | seeds | RL MACs removed (%) | L1-uniform at drop <= b (%) | RL test drop (worst) | RL predicted drop | "
        "RL CPU s: search / probes / whole run | L1-uniform run CPU s | RL / L1-uniform CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in budget_rows(results):
        reach = "" if row["frontier_macs_removed"] is None else f"{row['frontier_macs_removed']:.1f}"
        predicted = "" if row["predicted"] is None else f"{row['predicted']:.2f}"
        l1_cpu = row["frontier_cpu_s"]
        ratio = "" if not l1_cpu else f"{row['fit_cpu_s'] / l1_cpu:.2f}"
        lines.append(
            f"| {row['b']} | {', '.join(map(str, row['seeds']))} | {row['macs_removed']:.1f} | {reach} | "
            f"{row['drop']:.2f} ({row['worst_drop']:.2f}) | {predicted} | {row['search_cpu_s']:.0f} / "
            f"{row['probe_cpu_s']:.0f} / {row['fit_cpu_s']:.0f} | {'' if not l1_cpu else f'{l1_cpu:.0f}'} | {ratio} |"
        )
    return lines


def count_or_fraction(text: str) -> int | float:
    """`--min-keep`: a count when written without a point, else a fraction."""
    return float(text) if "." in text else int(text)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, help="print the Markdown table of a results JSON and write its plot")
    p.add_argument(
        "--merge", type=Path, nargs="+", help="write the runs of these results JSONs (one baseline) to --output"
    )
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "cifar10", "cifar100", "embedded"])
    p.add_argument("--data-dir", default="../shared/data/fashion-mnist")
    p.add_argument("--b", type=float, nargs="*", default=[0.5, 1.0, 2.0, 3.0])
    p.add_argument(
        "--macs-targets",
        type=float,
        nargs="*",
        default=[],
        help="MACs reductions (fractions) at which every --methods method also runs without an RL run (b null)",
    )
    p.add_argument("--methods", nargs="*", default=list(MATCHED), choices=MATCHED)
    p.add_argument("--distribution-steps", type=int, default=4, help="pruning steps of the distribution mode")
    p.add_argument("--baseline-epochs", type=int, default=20)
    p.add_argument("--finetune-epochs", type=int, default=16)
    p.add_argument(
        "--start-epoch",
        type=int,
        default=0,
        help="RLPruneCallback's pruning epoch: the unpruned network fine-tunes this long before it is pruned",
    )
    p.add_argument(
        "--min-keep",
        type=count_or_fraction,
        default=0.1,
        help="RLPruneCallback's filters every layer keeps: a count (e.g. 4) or a fraction with a point (e.g. 0.25)",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="knowledge distillation from the baseline while every method fine-tunes: weight of the term (0: off)",
    )
    p.add_argument("--distill-temperature", type=float, default=4.0, help="softmax temperature of the distillation")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--limit-train-batches",
        type=float,
        default=1.0,
        help="fraction of the training set seen per fine-tuning epoch (the baseline always sees all of it)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train and measure in the channels_last layout",
    )
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--seed", type=int, default=0, help="seed of the runs: agents, sampling and fine-tuning order")
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the validation split held out from the training data (fixed by the baseline's training)",
    )
    p.add_argument("--work", default="benchmarks/work/bsweep")
    p.add_argument("--output", default="benchmarks/results/bsweep.json")
    args = p.parse_args(argv)
    if not 0 <= args.start_epoch < args.finetune_epochs:
        p.error(f"--start-epoch {args.start_epoch} must be >= 0 and below --finetune-epochs {args.finetune_epochs}")
    if not is_min_keep(args.min_keep):
        p.error(f"--min-keep {args.min_keep} must be a count >= 1 (e.g. 4) or a fraction in (0, 1] (e.g. 0.25)")
    if args.distill_weight < 0 or args.distill_temperature <= 0:
        p.error(
            f"--distill-weight {args.distill_weight} must be >= 0 (0: no distillation) and --distill-temperature "
            f"{args.distill_temperature} > 0"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.report:
        print(report(args.report))
        return
    if args.merge:
        Path(args.output).write_text(json.dumps(merge(args.merge), indent=2))
        return
    print(json.dumps(sweep(args), indent=2))


if __name__ == "__main__":
    main()
