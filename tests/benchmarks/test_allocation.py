"""`benchmarks/allocation.py`: the tilted family of allocations, cut from a sweep's baseline and fine-tuned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import fast_trainer, load_benchmark, tiny_classifier, tiny_data

from lightning_prune import ImageClassifier
from lightning_prune.engine import surgery
from lightning_prune.engine.cost import model_cost
from lightning_prune.engine.importance import filter_scores


@pytest.fixture(scope="module")
def allocation():
    return load_benchmark("allocation")


def test_tilted_counts_are_uniform_at_zero_and_lean_with_the_tilt(allocation) -> None:
    sizes = [16, 32, 64, 128]
    assert allocation.tilted_counts(sizes, 0.0, 0.5) == [8, 16, 32, 64]
    early, late = allocation.tilted_counts(sizes, -2.0, 0.5), allocation.tilted_counts(sizes, 2.0, 0.5)
    assert early[0] > 8 > late[0] and early[-1] < 64 < late[-1]
    assert allocation.tilted_counts(sizes, -4.0, 1.0)[0] == 16  # at most every filter
    assert allocation.tilted_counts(sizes, 0.0, 0.001) == [1, 1, 1, 1]  # at least one


def test_stream_tilt_moves_filters_between_streams_and_the_other_groups(allocation) -> None:
    sizes, streams = [16, 16, 32, 32], [True, False, True, False]
    assert allocation.tilted_counts(sizes, 0.0, 0.5, streams, 0.0) == [8, 8, 16, 16]
    fuller = allocation.tilted_counts(sizes, 0.0, 0.5, streams, 1.0)
    thinner = allocation.tilted_counts(sizes, 0.0, 0.5, streams, -1.0)
    assert fuller == [13, 5, 26, 10] and thinner == [5, 13, 10, 26]


def _checkpoint(name: str, path: Path) -> Path:
    """A tiny network of `name` trained one step, saved to `path`."""
    module = tiny_classifier(name, width=0.25)
    trainer = fast_trainer(path.parent, max_epochs=1, limit_train_batches=1)
    trainer.fit(module, datamodule=tiny_data())
    trainer.save_checkpoint(path)
    return path


def test_stream_tilted_allocations_on_a_residual_network(allocation, tmp_path) -> None:
    base = _checkpoint("resnet20", tmp_path / "resnet.ckpt")
    module = ImageClassifier.load_from_checkpoint(base, map_location="cpu")
    x = surgery.example_input(module.model, module.plan.input_shape)
    groups = surgery.channel_groups(module.model, surgery.build_graph(module.model, x), x)
    streams = {g.name for g in groups if len(g.members) > 1}
    assert streams == {"conv1", "layer2.0.shortcut.0", "layer3.0.shortcut.0"}
    macs = model_cost(module.model, x).macs
    for stream_tilt in (-1.0, 1.0):
        layers = allocation.tilted_layers(base, 0.0, 0.6, stream_tilt)
        cut = ImageClassifier.load_from_checkpoint(base, map_location="cpu")
        allocation.cut_to_counts(cut, layers)
        assert abs(model_cost(cut.model, x).macs - 0.4 * macs) <= 0.1 * macs
        kept = {layer["name"]: layer["after"] / g.size for layer, g in zip(layers, groups, strict=True)}
        stream_share = max(kept[n] for n in streams) if stream_tilt < 0 else min(kept[n] for n in streams)
        others = [share for name, share in kept.items() if name not in streams]
        assert stream_share < min(others) if stream_tilt < 0 else stream_share > max(others)

    with pytest.raises(SystemExit, match="no channel group of VGG couples several convolutions"):
        allocation.tilted_layers(_checkpoint("vgg11", tmp_path / "vgg.ckpt"), 0.0, 0.5, 1.0)


def test_cut_to_counts_keeps_the_filters_the_criterion_ranks_highest(allocation, tmp_path) -> None:
    torch.manual_seed(0)
    base = _checkpoint("vgg11", tmp_path / "vgg.ckpt")
    dm = tiny_data()
    dm.setup("fit")
    batches = [next(iter(dm.train_dataloader()))]
    layers = [{"name": "features.0", "after": 3}]
    best = {}
    for criterion in ("l1", "taylor"):
        module = ImageClassifier.load_from_checkpoint(base, map_location="cpu")
        conv = module.model.get_submodule("features.0")
        weight = conv.weight.detach().clone()
        scores = filter_scores(module.model, [conv], criterion, batches)[conv]
        allocation.cut_to_counts(module, layers, criterion, batches)
        best[criterion] = sorted(scores.argsort(descending=True)[:3].tolist())
        assert torch.equal(module.model.get_submodule("features.0").weight.detach(), weight[best[criterion]])
    assert best["l1"] != best["taylor"]  # the two criteria keep other filters, so the test tells them apart


def test_tilted_allocations_reach_the_macs_asked_for(allocation, tmp_path) -> None:
    bsweep = load_benchmark("bsweep")
    flags = [
        "--dataset", "embedded", "--model", "vgg11", "--width", "0.125", "--baseline-epochs", "1",
        "--finetune-epochs", "1", "--limit-train-batches", "0.1", "--latency-repeats", "1", "--accelerator", "cpu",
        "--work", str(tmp_path),
    ]  # fmt: skip
    args = bsweep.parse([*flags, "--output", str(tmp_path / "unused.json")])
    baseline = bsweep.train_baseline(args, bsweep.datamodule(args), tmp_path / "baseline.ckpt")

    allocation.main([*flags, "--tilt", "-2", "0", "--macs-removed", "0.5", "--output", str(tmp_path / "tilts.json")])
    leaning, uniform = json.loads((tmp_path / "tilts.json").read_text())["runs"]
    for run, tilt in ((leaning, -2.0), (uniform, 0.0)):
        assert (run["method"], run["tilt"], run["macs_target"], run["b"]) == ("tilted", tilt, 0.5, None)
        assert abs(run["macs"] - 0.5 * baseline["macs"]) <= 0.1 * baseline["macs"]
        assert 0.0 <= run["test_acc"] <= 100.0
    first, last = next(iter(uniform["kept"])), list(uniform["kept"])[-1]
    assert leaning["kept"][first] > uniform["kept"][first] and leaning["kept"][last] < uniform["kept"][last]
    assert uniform["criterion"] == "l1"

    out = tmp_path / "taylor.json"
    allocation.main([*flags, "--tilt", "0", "--macs-removed", "0.5", "--criterion", "taylor", "--output", str(out)])
    (taylor,) = json.loads(out.read_text())["runs"]
    assert taylor["criterion"] == "taylor" and taylor["kept"] == uniform["kept"] and taylor["macs"] == uniform["macs"]

    with pytest.raises(SystemExit):
        allocation.main([*flags, "--tilt", "0", "--output", str(tmp_path / "x.json")])  # no --macs-removed
    with pytest.raises(SystemExit):
        allocation.main([*flags, "--tilt", "0", "--macs-removed", "70", "--output", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="does not exist: pass the --work folder of a b-sweep"):
        allocation.main([*flags[:-1], str(tmp_path / "none"), "--tilt", "0", "--macs-removed", "0.5", "--output", "x"])


def test_flags_that_do_not_go_together_fail_before_any_work(allocation, capsys) -> None:
    flags = ["--work", "nowhere", "--output", "x"]
    with pytest.raises(SystemExit):  # an RL run's allocation is not tilted
        allocation.main([*flags, "--summary", "s.json", "--stream-tilt", "1"])
    assert "--stream-tilt goes with --tilt" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # nor cut to other MACs
        allocation.main([*flags, "--summary", "s.json", "--macs-removed", "0.5"])
    assert "--macs-removed goes with --tilt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        allocation.main([*flags, "--tilt", "0", "--macs-removed", "0.5", "--taylor-batches", "0"])
    assert "--taylor-batches 0 must be >= 1" in capsys.readouterr().err
