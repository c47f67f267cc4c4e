"""Shared runs: the quickstart (one subprocess for the CLI and report tests) and tiny checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
from filelock import FileLock
from helpers import one_thread

from lightning_prune import ImageClassifier
from lightning_prune.zoo.data import EmbeddedFashionMNISTDataModule

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per CPU this process may use (logical CPUs, unlike xdist's physical-core count when
    psutil is installed; pyproject's `--maxprocesses` caps it). Each worker runs torch on one thread."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The whole session, fixtures included, runs torch on one intra-op thread (see `helpers.one_thread`)."""
    with one_thread():
        yield


def _run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m lightning_prune.io.cli ARGS` from the repository root with the package importable."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # one torch thread, like the test process (and no oversubscription under xdist)
    }
    return subprocess.run(
        [sys.executable, "-m", "lightning_prune.io.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_cli():
    """`run_cli(*args)`: the command line in a subprocess, returning the completed process."""
    return _run_cli


@dataclass
class QuickstartRun:
    process: subprocess.CompletedProcess
    seconds: float
    log_dir: Path | None
    summary: dict | None
    checkpoint: Path | None


#: The quickstart config on less compute: the same shipped dense network, budget and schedule (the search, three
#: probes and the cut at epoch 0), over 4 epochs of 20 of the 47 training batches, with probe cycles of 10 batches
#: and a shorter search (two agent updates per layer, BatchNorm re-estimated on one batch).
QUICKSTART_OVERRIDES = (
    "--trainer.max_epochs=4",
    "--trainer.limit_train_batches=20",
    "--trainer.callbacks.options.agent_updates=2",
    "--trainer.callbacks.options.calibration_batches=1",
    "--trainer.callbacks.options.probe_batches=10",
)


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test session's temporary directory, the same for every xdist worker (each has its own below it)."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> QuickstartRun:
    """`lightning-prune fit --config configs/quickstart.yaml` with `QUICKSTART_OVERRIDES`, writing under a
    temporary directory: once per session, even under xdist, where the first worker to need it runs it while any
    other one waits on a file lock, then reads the same outcome."""
    shared = _session_dir(tmp_path_factory)
    root, outcome = shared / "quickstart", shared / "quickstart.json"
    with FileLock(shared / "quickstart.lock"):
        if not outcome.exists():
            root.mkdir(exist_ok=True)  # a worker that died while running it may have left it
            start = time.perf_counter()
            process = _run_cli(
                "fit",
                "--config",
                "configs/quickstart.yaml",
                *QUICKSTART_OVERRIDES,
                "--trainer.default_root_dir",
                str(root),
            )
            seconds = time.perf_counter() - start
            fields = {"args": process.args, "returncode": process.returncode, "stdout": process.stdout}
            outcome.write_text(json.dumps({**fields, "stderr": process.stderr, "seconds": seconds}))
    ran = json.loads(outcome.read_text())
    summaries = sorted(root.glob("lightning_logs/version_*/pruning_summary.json"))
    log_dir = summaries[-1].parent if summaries else None
    checkpoints = sorted(log_dir.glob("checkpoints/*.ckpt")) if log_dir else []
    return QuickstartRun(
        process=subprocess.CompletedProcess(ran["args"], ran["returncode"], ran["stdout"], ran["stderr"]),
        seconds=ran["seconds"],
        log_dir=log_dir,
        summary=json.loads(summaries[-1].read_text()) if summaries else None,
        checkpoint=checkpoints[-1] if checkpoints else None,
    )


def _fit_briefly(module: ImageClassifier, root: Path) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=EmbeddedFashionMNISTDataModule(batch_size=64))
    return trainer


@pytest.fixture(scope="session")
def tiny_pruned_layers() -> dict[str, list[int]]:
    """Layers of the tiny VGG-11 (width 1/8) pruned by `tiny_checkpoints`, with the channels each one removes."""
    return {"features.4": [0, 3, 5, 7, 9], "features.15": list(range(0, 64, 2)), "features.22": list(range(40))}


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_pruned_layers) -> dict[str, Path]:
    """Checkpoints of a tiny VGG-11 trained 2 steps: "unpruned", and "pruned" with `tiny_pruned_layers` removed."""
    root = tmp_path_factory.mktemp("tiny")
    pl.seed_everything(0)
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    trainer = _fit_briefly(module, root)
    trainer.save_checkpoint(root / "unpruned.ckpt")
    for name, idxs in tiny_pruned_layers.items():
        module.prune(name, idxs)
    trainer = _fit_briefly(module, root)
    trainer.save_checkpoint(root / "pruned.ckpt")
    return {"unpruned": root / "unpruned.ckpt", "pruned": root / "pruned.ckpt"}
