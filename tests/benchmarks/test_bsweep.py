"""End-to-end test of `benchmarks/bsweep.py` on the embedded data: a tiny sweep, its resumption and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark

from lightning_prune import ImageClassifier, RLOptions

#: A search of a few scored masks per layer and two probes of a batch a cycle: the sweep's RL runs use the
#: callback's defaults, which take minutes.
FAST = RLOptions(num_samples=2, agent_updates=1, reward_batches=1, calibration_batches=1, probes=2, probe_batches=1)


@pytest.fixture
def bsweep(monkeypatch):
    module = load_benchmark("bsweep")

    class Fast(module.TimedRLPrune):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs, options=FAST)

    monkeypatch.setattr(module, "TimedRLPrune", Fast)
    return module


def _argv(tmp_path: Path, *methods: str) -> list[str]:
    return [
        "--dataset", "embedded", "--model", "vgg11", "--width", "0.125", "--b", "50", "--batch-size", "64",
        "--methods", *methods, "--baseline-epochs", "1", "--finetune-epochs", "2", "--limit-train-batches", "0.1",
        "--latency-repeats", "1", "--accelerator", "cpu", "--work", str(tmp_path / "work"),
        "--output", str(tmp_path / "sweep.json"),
    ]  # fmt: skip


def test_sweep_saves_each_run_resumes_and_reports(bsweep, tmp_path) -> None:
    bsweep.main(_argv(tmp_path, "l1_uniform"))
    results = json.loads((tmp_path / "sweep.json").read_text())
    assert results["dataset"] == "embedded" and set(results["baseline"]) == {"test_acc", "macs", "params"}
    rl, l1 = results["runs"]
    assert rl["probes"] and rl["level"]["ratio"] > 0 and "fit_cpu_s" in l1
    assert {"search_cpu_s", "probe_cpu_s", "fit_s", "fit_cpu_s"} <= set(rl)
    assert (rl["method"], rl["b"], l1["method"], l1["b"]) == ("rl", 50.0, "l1_uniform", 50.0)
    for run in (rl, l1):
        assert {"test_acc", "macs", "params", "latency_ms", "search_s", "seed"} <= set(run)
        assert 0.0 <= run["test_acc"] <= 100.0 and run["macs"] < results["baseline"]["macs"]
    assert abs(l1["macs"] - rl["macs"]) <= 0.1 * rl["macs"]  # matched, up to the coarse channel counts

    bsweep.main(_argv(tmp_path, "l1_uniform", "random"))  # a rerun only adds what is missing
    runs = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert runs[:2] == [rl, l1] and [r["method"] for r in runs] == ["rl", "l1_uniform", "random"]

    table = bsweep.report(tmp_path / "sweep.json")
    assert table.count("\n| ") == 6 and "![accuracy vs MACs](sweep.png)" in table  # header + 3 runs, header + b
    assert "| b | seeds | MACs removed (%) | drop | RL - l1_uniform | RL - random |" in table
    assert (tmp_path / "sweep.png").stat().st_size > 0

    # The RL run's allocation, retrained from the baseline, has the RL network's shape.
    (summary,) = (tmp_path / "work").glob("rl_b50.0/*/pruning_summary.json")
    flags = [a for a in _argv(tmp_path)[:-2] if a != "--methods"]  # the sweep's flags but its --output
    load_benchmark("allocation").main(
        [*flags, "--summary", str(summary), "--output", str(tmp_path / "allocation.json")]
    )
    (retrained,) = json.loads((tmp_path / "allocation.json").read_text())["runs"]
    assert (retrained["method"], retrained["b"]) == ("rl_allocation", 50.0)
    assert retrained["macs"] == retrained["rl_final_macs"] == rl["macs"] and retrained["params"] == rl["params"]


def test_macs_targets_run_the_methods_without_rl_on_the_baseline_split(bsweep, tmp_path) -> None:
    argv = [*_argv(tmp_path, "l1_uniform"), "--b", "--macs-targets", "0.6"]
    bsweep.main(argv)
    results = json.loads((tmp_path / "sweep.json").read_text())
    (run,) = results["runs"]
    assert (run["method"], run["b"], run["macs_target"]) == ("l1_uniform", None, 0.6)
    assert abs(run["macs"] - 0.4 * results["baseline"]["macs"]) <= 0.05 * results["baseline"]["macs"]
    bsweep.main(argv)  # done: nothing is rerun
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"] == [run]
    assert "| l1_uniform | - |" in bsweep.report(tmp_path / "sweep.json")
    with pytest.raises(SystemExit, match="made with --split-seed 0, not 1"):
        bsweep.main([*argv, "--seed", "1", "--split-seed", "1"])  # the baseline was trained on split 0


def test_distillation_teaches_every_method_while_it_fine_tunes(bsweep, tmp_path, monkeypatch) -> None:
    teachers, taught = [], set()

    class Spy(bsweep.Distiller):
        def __init__(self, teacher, temperature, weight) -> None:
            super().__init__(teacher, temperature, weight)
            teachers.append((sum(p.numel() for p in teacher.parameters()), temperature, weight))

        def __call__(self, x, student_logits):
            taught.add(id(self))
            return super().__call__(x, student_logits)

    monkeypatch.setattr(bsweep, "Distiller", Spy)
    bsweep.main([*_argv(tmp_path, "l1_uniform"), "--distill-weight", "0.5"])
    results = json.loads((tmp_path / "sweep.json").read_text())
    assert results["protocol"]["distill_weight"] == 0.5 and len(results["runs"]) == 2
    assert teachers == [(results["baseline"]["params"], 4.0, 0.5)] * 2  # the unpruned baseline, for RL and L1
    assert len(taught) == 2  # and each added its term to the training loss
    with pytest.raises(SystemExit):
        bsweep.parse(["--distill-weight", "-1"])


@pytest.mark.parametrize(
    ("flags", "key", "protocol", "value", "bad"),
    [
        # the unpruned network fine-tunes before it is pruned; the last epoch of --finetune-epochs 8 is 7
        (["--start-epoch", "1"], "start_epoch", "start_epoch", 1, [["--start-epoch", "-1"], ["--start-epoch", "8"]]),
        (["--min-keep", "4"], "min_keep", "min_keep", 4, [["--min-keep", "0"], ["--min-keep", "1.5"]]),
        (["--min-keep", "0.25"], "min_keep", "min_keep", 0.25, [["--min-keep", "x"]]),
    ],
)  # fmt: skip
def test_rl_flags_reach_the_callback(bsweep, tmp_path, monkeypatch, flags, key, protocol, value, bad) -> None:
    seen = []

    class Spy(bsweep.TimedRLPrune):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            seen.append(kwargs[key])

    monkeypatch.setattr(bsweep, "TimedRLPrune", Spy)
    bsweep.main([*_argv(tmp_path), "--finetune-epochs", "3", *flags])  # room for a step after start_epoch=1
    results = json.loads((tmp_path / "sweep.json").read_text())
    assert seen == [value] and results["protocol"][protocol] == value and len(results["runs"]) == 1
    for argv in bad:
        with pytest.raises(SystemExit):
            bsweep.parse([*argv, "--finetune-epochs", "8"])


def test_frontier_reads_the_most_macs_a_uniform_ratio_removes_within_b(bsweep) -> None:
    def run(method: str, b: float | None, acc: float, macs: int, **extra) -> dict:
        return {"method": method, "b": b, "seed": 0, "test_acc": acc, "macs": macs, **extra}

    timing = {"search_s": 100.0, "search_cpu_s": 60.0, "probe_cpu_s": 40.0, "fit_s": 400.0, "fit_cpu_s": 400.0}
    results = {
        "baseline": {"test_acc": 93.0, "macs": 100},
        "runs": [
            run("l1_uniform", None, 92.8, 70, macs_target=0.3, fit_cpu_s=300.0),
            run("l1_uniform", None, 92.0, 50, macs_target=0.5, fit_cpu_s=300.0),
            run("l1_uniform", None, 90.0, 30, macs_target=0.7, fit_cpu_s=300.0),
            run("rl", 1.0, 92.5, 55, **timing),
        ],
    }  # fmt: skip
    line = bsweep.frontier(results)
    assert [(round(m), round(d, 2)) for m, d, _ in line] == [(30, 0.2), (50, 1.0), (70, 3.0)]
    assert bsweep.frontier_at(line, 1.0) == pytest.approx(50.0)
    assert bsweep.frontier_at(line, 2.0) == pytest.approx(60.0)  # halfway from a drop of 1 to 3
    assert bsweep.frontier_at(line, 0.1) is None and bsweep.frontier_at(line, 5.0) == pytest.approx(70.0)
    (row,) = bsweep.budget_rows(results)
    assert row["macs_removed"] == pytest.approx(45.0) and row["frontier_macs_removed"] == pytest.approx(50.0)
    assert (row["search_cpu_s"], row["probe_cpu_s"], row["fit_cpu_s"], row["frontier_cpu_s"]) == (60, 40, 400, 300)
    assert row["drop"] == row["worst_drop"] == pytest.approx(0.5)
    assert "| 1.0 | 0 | 45.0 | 50.0 | 0.50 (0.50) |  | 60 / 40 / 400 | 300 | 1.33 |" in bsweep.frontier_table(results)


def test_margins_pair_each_rl_run_with_the_methods_run_at_its_b_and_seed(bsweep) -> None:
    def run(method: str, b: float | None, seed: int, acc: float, macs: int = 40) -> dict:
        return {"method": method, "b": b, "seed": seed, "test_acc": acc, "macs": macs}

    results = {
        "baseline": {"test_acc": 93.0, "macs": 100},
        "runs": [
            run("rl", 2.0, 1, 92.0, 30), run("l1_uniform", 2.0, 1, 92.5, 30), run("random", 2.0, 1, 91.0, 30),
            run("rl", 2.0, 0, 92.2), run("l1_uniform", 2.0, 0, 92.1),  # no random run at seed 0
            run("rl", 1.0, 0, 92.6), run("l1_uniform", None, 0, 90.0),  # a MACs-target run matches no RL run
        ],
    }  # fmt: skip
    one, two = bsweep.margins(results)
    assert (one["b"], one["seeds"], one["rl_minus"]) == (1.0, [0], {})
    assert two["b"] == 2.0 and two["seeds"] == [0, 1] and two["macs_removed"] == [60.0, 70.0]
    assert two["drop"] == pytest.approx([0.8, 1.0])
    assert list(two["rl_minus"]) == ["l1_uniform"] and two["rl_minus"]["l1_uniform"] == pytest.approx([0.1, -0.5])
    assert bsweep._cell([0.1, -0.5]) == "-0.20 (+0.10, -0.50)" and bsweep._cell([60.0], ".1f") == "60.0"


def test_merge_joins_the_runs_of_one_baseline_and_refuses_others(bsweep, tmp_path) -> None:
    def sweep(name: str, b: float, seeds: list[int], baseline_acc: float = 93.0) -> Path:
        path = tmp_path / f"{name}.json"
        runs = [{"method": m, "b": b, "seed": s} for s in seeds for m in ("rl", "l1_uniform")]
        head = {"model": "vgg16", "dataset": "fashion-mnist", "split_seed": 0, "baseline": {"test_acc": baseline_acc}}
        path.write_text(json.dumps({**head, "protocol": {"b": [b], "seed": seeds[-1], "lr": 0.05}, "runs": runs}))
        return path

    two, one = sweep("b2", 2.0, [1]), sweep("b1", 1.0, [0, 1])
    bsweep.main(["--merge", str(two), str(one), "--output", str(tmp_path / "merged.json")])
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [(r["b"], r["seed"], r["method"]) for r in merged["runs"]] == [
        (1.0, 0, "rl"), (1.0, 0, "l1_uniform"), (1.0, 1, "rl"), (1.0, 1, "l1_uniform"), (2.0, 1, "rl"),
        (2.0, 1, "l1_uniform"),
    ]  # fmt: skip
    assert merged["protocol"] == {"lr": 0.05} and merged["merged_from"] == [str(two), str(one)]
    with pytest.raises(SystemExit, match="has baseline .* only sweeps of one baseline checkpoint"):
        bsweep.merge([one, sweep("other", 3.0, [0], baseline_acc=92.0)])
    with pytest.raises(SystemExit, match=r"repeats the run \('rl', 1.0, 0, None\)"):
        bsweep.merge([one, sweep("again", 1.0, [0])])


def test_merge_takes_a_sweep_stopped_before_its_first_run(bsweep, tmp_path) -> None:
    head = {"model": "resnet56", "dataset": "fashion-mnist", "split_seed": 0, "baseline": {"test_acc": 93.0}}
    empty, done = tmp_path / "b1.json", tmp_path / "b2.json"
    empty.write_text(json.dumps({**head, "protocol": {}}))  # written once the baseline was measured
    run = {"method": "rl", "b": 2.0, "seed": 0}
    done.write_text(json.dumps({**head, "protocol": {}, "runs": [run]}))
    assert bsweep.merge([empty, done])["runs"] == [run] and bsweep.merge([empty])["runs"] == []


@pytest.mark.parametrize("method", ["l1_uniform", "random", "magnitude_global"])
def test_rule_based_pruning_shrinks_the_model_and_leaves_it_in_train_mode(bsweep, method) -> None:
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    bsweep.prune_rule_based(module, method, 0.5, seed=0)
    assert all(m.training for m in module.model.modules())  # fine-tuning must update BatchNorm statistics
    assert module.model.features[0].out_channels < 8 and module.plan.steps
