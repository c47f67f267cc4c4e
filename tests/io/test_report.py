from __future__ import annotations

import json

import pytest
from helpers import RESUME_LAYERS, resume_run
from PIL import Image

from lightning_prune.io.cli import main
from lightning_prune.io.report import build_report


@pytest.fixture(scope="module")
def callback_run(tmp_path_factory):
    """A short RLPruneCallback run (`helpers.resume_run`: two layers of a tiny VGG-11 cut at epoch 1): its
    callback, last checkpoint and summary."""
    root = tmp_path_factory.mktemp("callback-run")
    _, callback = resume_run(root)
    summary = json.loads((root / "pruning_summary.json").read_text())
    return callback, root / "ckpt" / "last.ckpt", summary


def test_report_of_callback_checkpoint_matches_run_summary(callback_run, capsys):
    callback, checkpoint, summary = callback_run
    assert summary["level"]["ratio"] > 0
    assert main(["report", str(checkpoint), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == [layer["name"] for layer in summary["layers"]]
    assert [layer["name"] for layer in data["layers"]] == RESUME_LAYERS
    for got, logged in zip(data["layers"], summary["layers"], strict=True):
        assert (got["before"], got["after"]) == (logged["before"], logged["after"])
    assert data["macs"] == {
        "before": summary["baseline"]["macs"],
        "after": summary["final"]["macs"],
        "removed_pct": pytest.approx(100 * (1 - summary["final"]["macs"] / summary["baseline"]["macs"]), abs=0.01),
    }
    assert data["params"]["after"] == summary["final"]["params"]
    assert data["search"] == {
        "callback": "RLPruneCallback",
        "layers_done": 2,
        "layers_total": 2,
        "baseline_val_acc": pytest.approx(summary["baseline"]["val_acc"]),
    }


def test_report_of_a_distribution_checkpoint(tmp_path):
    from helpers import fast_trainer, tiny_classifier, tiny_data
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_prune import DistributionOptions, DistributionPruneCallback

    options = DistributionOptions(num_samples=2, updates=1, elite_size=1, reward_batches=1, calibration_batches=1)
    prune = DistributionPruneCallback(target=0.3, step_size=0.3, start_epoch=0, finetune_epochs=1, options=options)
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    fast_trainer(tmp_path, [prune, saving], enable_checkpointing=True, max_epochs=2, limit_train_batches=1).fit(
        tiny_classifier(), datamodule=tiny_data()
    )
    data = build_report(tmp_path / "ckpt" / "last.ckpt")
    removed = {r["name"] for r in prune.history}
    assert {layer["name"] for layer in data["layers"]} == removed and data["macs"]["after"] < data["macs"]["before"]
    assert data["search"]["layers_done"] == len(removed) and data["search"]["callback"] == "DistributionPruneCallback"


def test_report_prints_table(callback_run, capsys):
    _, checkpoint, _ = callback_run
    assert main(["report", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    for text in ("features.4", "features.8", "channels before", "MACs:", "% removed"):
        assert text in out
    assert "RLPruneCallback: 2/2 layers pruned" in out


def test_report_plot_is_a_png(tiny_checkpoints, tmp_path, capsys):
    plot = tmp_path / "plots" / "channels.png"
    assert main(["report", str(tiny_checkpoints["pruned"]), "--plot", str(plot)]) == 0
    assert f"Plot written to {plot}" in capsys.readouterr().out
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100


def test_report_of_plan_without_callback(tiny_checkpoints, tiny_pruned_layers):
    data = build_report(tiny_checkpoints["pruned"])
    assert [layer["name"] for layer in data["layers"]] == list(tiny_pruned_layers)
    full = {"features.4": 16, "features.15": 64, "features.22": 64}
    for layer in data["layers"]:
        removed = len(tiny_pruned_layers[layer["name"]])
        assert (layer["before"], layer["after"]) == (full[layer["name"]], full[layer["name"]] - removed)
    assert data["search"] is None
    assert 0 < data["macs"]["after"] < data["macs"]["before"]
    assert 0 < data["params"]["after"] < data["params"]["before"]
    assert data["input_shape"] == [1, 1, 32, 32]


def test_json_and_plot_together(tiny_checkpoints, tmp_path, capsys):
    plot = tmp_path / "c.png"
    assert main(["report", str(tiny_checkpoints["pruned"]), "--json", "--plot", str(plot)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "vgg11"
    assert plot.is_file()


def test_unpruned_checkpoint_is_a_clear_error(tiny_checkpoints, capsys):
    assert main(["report", str(tiny_checkpoints["unpruned"])]) == 2
    err = capsys.readouterr().err
    assert "holds no pruning information" in err and err.count("\n") == 1


def test_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.ckpt"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lightning-prune report: error: No checkpoint at")


def test_unwritable_plot_path_is_a_clear_error(tiny_checkpoints, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    plot = tmp_path / "file" / "channels.png"
    assert main(["report", str(tiny_checkpoints["pruned"]), "--plot", str(plot)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-prune report: error: Cannot write '{plot}'") and "pass --plot" in err
    assert err.count("\n") == 1
