"""Tests for ``lightning_prune.io.tracking``: what loggers, Weights & Biases and the terminal show of a pruning run.

W&B runs offline into ``tmp_path``; the assertions read the run's ``.wandb`` record log (what `wandb sync`
would upload) and its media files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import rich
from pytorch_lightning.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from lightning_prune import ImageClassifier, RLOptions, RLPruneCallback
from lightning_prune.io import tracking
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule


def _fit(
    tmp_path: Path,
    layers: list[str],
    updates: int,
    logger: Any = False,
    callbacks: list[pl.Callback] | None = None,
    **trainer_kwargs: Any,
) -> tuple[pl.Trainer, RLPruneCallback]:
    """A tiny pruning run: VGG-11 at width 1/8 on the embedded Fashion-MNIST, one batch per epoch, every layer
    pruned at epoch 0 after two probes of one batch per cycle. `b=50` with `min_keep=0.5` cuts every layer to
    about half, so the run always shrinks the model."""
    pl.seed_everything(0)
    options = RLOptions(agent_updates=updates, num_samples=2, reward_batches=1, probes=2, probe_batches=1)
    prune = RLPruneCallback(b=50.0, layers=layers, min_keep=0.5, seed=0, options=options)
    kwargs: dict[str, Any] = {
        "max_epochs": 2,
        "limit_train_batches": 1,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **trainer_kwargs,
    }
    trainer = pl.Trainer(logger=logger, callbacks=[prune, *(callbacks or [])], **kwargs)
    model = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    trainer.fit(model, datamodule=EmbeddedFashionMNISTDataModule(batch_size=16, val_size=64, num_workers=0))
    return trainer, prune


# -- reading an offline W&B run --------------------------------------------------------------------------------


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """W&B offline with every file under tmp_path; the run is finished afterwards."""
    wandb = pytest.importorskip("wandb")
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": tmp_path,
        "WANDB_DATA_DIR": tmp_path / "wandb-data",
        "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
        "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
    }.items():
        monkeypatch.setenv(name, str(value))
    yield wandb
    wandb.finish()  # a failed test leaves no run behind


def _records(wandb: Any, save_dir: Path) -> list[Any]:
    """Finish the run and read its records. The service writes the `.wandb` file out when it shuts down
    (`teardown`); the file is a 7-byte W&B header followed by a LevelDB-style log (32 KiB blocks of chunks:
    crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2

    wandb.finish()
    wandb.teardown()
    (path,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:  # block trailer / padding
            pos += left
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _of(records: list[Any], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _items(update: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in update}


def _summary(records: list[Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for record in _of(records, "summary"):
        summary.update(_items(record.update))
    return summary


def _model_artifacts(records: list[Any]) -> list[Any]:
    return [a for a in _of(records, "artifact") if a.type == "model"]


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


# -- W&B and the other loggers -----------------------------------------------------------------------------------


def test_wandb_run_shows_the_search_the_result_and_the_pruned_checkpoint(
    tmp_path: Path, wandb_offline: Any, capsys: pytest.CaptureFixture
) -> None:
    """Config, per-layer reward curves and histograms, final scalars, table, chart and checkpoint artifact in W&B;
    the same scalars in the CSV logger; no progress line with the progress bar off."""
    layers = ["features.0", "features.4"]
    loggers = [WandbLogger(save_dir=tmp_path, project="tracking-test"), CSVLogger(tmp_path, name="csv")]
    trainer, prune = _fit(tmp_path, layers, updates=2, logger=loggers, enable_checkpointing=True)
    records = _records(wandb_offline, tmp_path)
    summary = json.loads((tmp_path / "pruning_summary.json").read_text())

    config = {k: v for c in _of(records, "config") for k, v in _items(c.update).items()}
    assert config["rlprune"] == json.loads(json.dumps(prune.hparams))

    steps = {m.name: m.step_metric for m in _of(records, "metric") if m.name}
    for layer in ("features_0", "features_4"):
        for series in tracking.LAYER_SERIES:
            assert steps[f"prune/{layer}/{series}"] == tracking.UPDATE_STEP
    rows = [_items(h.item) for h in _of(records, "history")]
    curves = {}
    for layer in ("features_0", "features_4"):
        key = f"prune/{layer}/reward_mean"
        curves[layer] = [(r[tracking.UPDATE_STEP], r[key]) for r in rows if key in r]
    assert [s for s, _ in curves["features_0"]] == [0, 1] and [s for s, _ in curves["features_4"]] == [2, 3]
    assert [r["prune/reward_mean"] for r in rows if "prune/reward_mean" in r] == [
        v for c in curves.values() for _, v in c
    ]
    histograms = [r for r in rows if "prune/features_4/keep_probs/values" in r]
    assert len(histograms) == 2 and sum(histograms[-1]["prune/features_4/keep_probs/values"]) == 16

    final = _summary(records)
    assert final["prune/final/params"] == summary["final"]["params"] < summary["baseline"]["params"]
    assert final["prune/final/macs_reduction"] == pytest.approx(
        1 - summary["final"]["macs"] / summary["baseline"]["macs"]
    )
    assert final["prune/baseline/val_acc"] == pytest.approx(summary["baseline"]["val_acc"])

    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/media/table/prune/layers_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == tracking.LAYER_COLUMNS
    assert [row[:3] for row in table["data"]] == [[r["name"], r["before"], r["after"]] for r in prune.history]
    assert all(row[2] < row[1] for row in table["data"])
    probe_tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/prune/probes_*.table.json"))
    assert probe_tables and all(json.loads(t.read_text())["columns"] == tracking.PROBE_COLUMNS for t in probe_tables)
    assert json.loads(probe_tables[0].read_text())["data"] == json.loads(json.dumps(tracking.probe_rows(prune.probes)))
    assert final["prune/level/predicted_drop"] == pytest.approx(prune.level["predicted"])
    (chart,) = tmp_path.glob("wandb/offline-run-*/files/media/images/prune/channels_*.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (artifact,) = _model_artifacts(records)
    assert {"latest", "pruned"} <= set(artifact.aliases)
    checkpoint = Path(trainer.checkpoint_callback.best_model_path)
    assert json.loads(artifact.metadata)["original_filename"] == checkpoint.name
    (entry,) = artifact.manifest.contents
    assert entry.path == "model.ckpt" and entry.digest == _md5(checkpoint)

    with open(Path(loggers[1].log_dir) / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["prune/update_global"]) for r in csv_rows if r["prune/update_global"]] == [0, 1, 2, 3]
    assert [float(r["prune/final/params"]) for r in csv_rows if r["prune/final/params"]] == [
        final["prune/final/params"]
    ]
    assert "rlprune" in (Path(loggers[1].log_dir) / "hparams.yaml").read_text()
    assert "Pruning features" not in capsys.readouterr().out


@pytest.mark.parametrize("save_top_k", [1, 0], ids=["final-checkpoint-saved", "no-checkpoint-saved"])
def test_final_checkpoint_artifact_once_with_log_model(tmp_path: Path, wandb_offline: Any, save_top_k: int) -> None:
    """`log_model=True` uploads ModelCheckpoint's final file itself (no duplicate); where no file holds the final
    model, it is saved as `pruned-final.ckpt` and logged with the `pruned` alias."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=save_top_k)
    logger = WandbLogger(save_dir=tmp_path, project="tracking-test", log_model=True)
    _, prune = _fit(
        tmp_path, ["features.0"], updates=1, logger=logger, callbacks=[checkpoints], enable_checkpointing=True
    )

    (artifact,) = _model_artifacts(_records(wandb_offline, tmp_path))
    (entry,) = artifact.manifest.contents
    if save_top_k:
        assert "pruned" not in artifact.aliases  # logged by WandbLogger, not by tracking
        assert entry.digest == _md5(Path(checkpoints.best_model_path))
        assert not (tmp_path / "ckpt" / tracking.FINAL_CHECKPOINT).exists()
    else:
        path = tmp_path / "ckpt" / tracking.FINAL_CHECKPOINT
        assert "pruned" in artifact.aliases and entry.digest == _md5(path)
        restored = ImageClassifier.load_from_checkpoint(path)
        assert restored.model.get_submodule("features.0").out_channels == prune.history[0]["after"] < 8


def test_csv_logger_works_without_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a WandbLogger nothing imports wandb (here it cannot be imported) and the scalars reach the CSV."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = CSVLogger(tmp_path, name="csv")
    _fit(tmp_path, ["features.0"], updates=2, logger=logger, enable_checkpointing=True)
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len([r for r in rows if r["prune/reward_mean"]]) == 2
    assert len([r for r in rows if r["prune/final/macs_reduction"]]) == 1
    assert not list(tmp_path.rglob(tracking.FINAL_CHECKPOINT))


# -- the progress line of a search --------------------------------------------------------------------------


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_rich_progress_bar_shows_and_removes_the_search_line(tmp_path: Path) -> None:
    screen = io.StringIO()
    bar = RichProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 160})
    try:
        _fit(tmp_path, ["features.0"], updates=2, callbacks=[bar], enable_progress_bar=True)
    finally:
        rich.reconfigure()
    shown = _plain(screen.getvalue())
    assert "Pruning features.0 (1/1)" in shown and re.search(r"reward -?\d+\.\d{3}", shown)
    assert re.search(r"Pruning features\.0 \(1/1\) reward .*2/2", shown)  # update j of m
    assert all("Pruning" not in task.description for task in bar.progress.tasks)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "redirected"])
def test_tqdm_search_line_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    screen = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    _fit(tmp_path, ["features.0"], updates=2, callbacks=[TQDMProgressBar()], enable_progress_bar=True)
    shown = screen.getvalue()
    assert "Epoch 0" in shown  # Lightning's own bar was drawn in both cases
    assert ("Pruning features.0 (1/1)" in shown and "reward" in shown) == terminal


# -- pure helpers ---------------------------------------------------------------------------------------------


def _summary_dict(base_acc: float | None, final_acc: float | None) -> dict[str, Any]:
    layer = {"name": "features.0", "before": 8, "after": 2}
    return {
        "b": 1.0,
        "baseline": {"params": 1000, "macs": 10000, "val_acc": base_acc},
        "final": {"params": 900, "macs": 5000, "val_acc": final_acc},
        "layers": [layer, {**layer, "name": "features.4", "before": 16, "after": 16}],
    }


def test_final_metrics_and_layer_rows() -> None:
    metrics = tracking.final_metrics(_summary_dict(90.0, 89.5))
    assert metrics["prune/final/macs_reduction"] == pytest.approx(0.5)
    assert metrics["prune/final/params_reduction"] == pytest.approx(0.1)
    assert metrics["prune/final/acc_drop"] == pytest.approx(0.5)
    without_acc = tracking.final_metrics(_summary_dict(None, None))
    assert not any(key.endswith(("val_acc", "acc_drop")) for key in without_acc)
    rows = tracking.layer_rows(_summary_dict(90.0, 89.5))
    assert rows[0] == ["features.0", 8, 2, 75.0] and rows[1][3] == 0.0
    assert tracking.layer_key("layer1.0.conv1", "reward_mean") == "prune/layer1_0_conv1/reward_mean"


def test_channels_chart_is_an_rgb_image() -> None:
    image = tracking.channels_chart(_summary_dict(90.0, 89.5))
    assert image.dtype == np.uint8 and image.shape == (350, 400, 3)
    assert image.std() > 0  # something was drawn
