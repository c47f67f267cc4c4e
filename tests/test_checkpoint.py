"""Checkpoints of a pruning run: the plan travels as plain data in the module's extra state, so a checkpoint
loads into a freshly built module, with `weights_only=True`, resumes mid-pruning (between a step and its
measurement, and after SIGKILL during a step's search), and a corrupt or mismatched one is refused before anything
is overwritten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    RESUME_B,
    RESUME_LAYERS,
    fast_callback,
    fast_trainer,
    resume_run,
    steps,
    tiny_classifier,
    tiny_data,
)

from lightning_prune import ImageClassifier

HELPERS = Path(__file__).with_name("helpers.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: module, callback and its checkpoint directory."""
    root = tmp_path_factory.mktemp("reference")
    module, callback = resume_run(root)
    return module, callback, root / "ckpt"


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if torch.is_tensor(v)}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_plain_data_and_loads_into_a_fresh_module(reference):
    module, callback, ckpt = reference
    checkpoint = torch.load(ckpt / "last.ckpt", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("RLPruneCallback"))
    keys = {"widths", "orders", "dense", "probes", "level"}
    assert keys | {"groups", "history", "baseline", "args", "rng"} == set(state)
    assert state["history"] == callback.history and [r["name"] for r in state["history"]] == RESUME_LAYERS
    assert state["probes"] == callback.probes and state["level"] == callback.level and state["level"]["epoch"] == 1
    assert state["dense"] == callback.dense and state["args"]["b"] == RESUME_B
    assert checkpoint["state_dict"]["_extra_state"] == module.plan.state()

    loaded = ImageClassifier.load_from_checkpoint(ckpt / "last.ckpt")
    assert steps(loaded) == steps(module) and [s[0] for s in steps(loaded)] == RESUME_LAYERS
    assert _same_state(_state(loaded), _state(module))
    x = torch.randn(8, 1, 32, 32)
    module.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), module(x))


def test_resume_after_the_cut_ends_like_the_uninterrupted_run(reference, tmp_path):
    """`epoch=1.ckpt` holds the cut of epoch 1 (search, probes and cut happen in one hook, so no checkpoint falls
    between them): the resumed run prunes nothing more and ends with the same model."""
    module, callback, ckpt = reference
    midway = torch.load(ckpt / "epoch=1.ckpt", weights_only=True)
    assert [s[0] for s in midway["state_dict"]["_extra_state"]["steps"]] == RESUME_LAYERS
    saved = next(v for k, v in midway["callbacks"].items() if k.startswith("RLPruneCallback"))
    assert saved["level"] == callback.level and saved["probes"] == callback.probes

    resumed, resumed_callback = resume_run(tmp_path, ckpt_path=str(ckpt / "epoch=1.ckpt"))
    assert steps(resumed) == steps(module)
    assert resumed_callback.history == callback.history and resumed_callback.level == callback.level
    assert resumed_callback.dense == callback.dense
    assert _same_state(_state(resumed), _state(module))


def test_sigkill_during_the_search_resumes_to_the_same_result(reference, tmp_path):
    """Killed during the second group's search at epoch 1, the run's last checkpoint is epoch 0's (nothing cut
    yet); resumed from it, the search and probes run again and the run ends like the uninterrupted one."""
    module, callback, _ = reference
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HELPERS.parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(HELPERS), "kill", str(tmp_path), str(torch.get_num_threads())]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "searching").exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the run never reached the second layer's search"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()

    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["state_dict"]["_extra_state"]["steps"] == []
    resumed, resumed_callback = resume_run(tmp_path, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert steps(resumed) == steps(module)
    assert resumed_callback.history == callback.history and resumed_callback.probes == callback.probes
    assert _same_state(_state(resumed), _state(module))


# -- corrupt or mismatched checkpoints are refused, nothing overwritten -------------------------------------


def _refused(tmp_path: Path, module: ImageClassifier, path: Path, error: type[Exception], match: str) -> None:
    """Resuming `module` from `path` fails with `error`; neither the module nor the file changed."""
    before, data = _state(module), path.read_bytes()
    trainer = fast_trainer(tmp_path, [fast_callback(layers=RESUME_LAYERS)])
    with pytest.raises(error, match=match):
        trainer.fit(module, datamodule=tiny_data(), ckpt_path=str(path))
    assert _same_state(_state(module), before) and module.plan.steps == []
    assert path.read_bytes() == data
    assert trainer.global_step == 0


def test_truncated_checkpoint_is_refused(reference, tmp_path):
    _, _, ckpt = reference
    data = (ckpt / "last.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="corrupted"):
        ImageClassifier.load_from_checkpoint(path)
    _refused(tmp_path, tiny_classifier(), path, RuntimeError, "corrupted")


def test_checkpoint_of_another_network_is_refused(reference, tmp_path):
    _, _, ckpt = reference
    wider = tiny_classifier(width=0.25)
    match = r"does not match this VGG.*model\.features\.0\.weight: checkpoint \[8, 1, 3, 3\], model \[16, 1, 3, 3\]"
    _refused(tmp_path, wider, ckpt / "last.ckpt", ValueError, match)


def test_plan_naming_a_missing_layer_is_refused(reference, tmp_path):
    _, _, ckpt = reference
    checkpoint = torch.load(ckpt / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["_extra_state"]["steps"][1][0] = "features.99"
    path = tmp_path / "bad-plan.ckpt"
    torch.save(checkpoint, path)

    with pytest.raises(ValueError, match="names layer 'features.99', which this model does not have"):
        ImageClassifier.load_from_checkpoint(path)
    _refused(tmp_path, tiny_classifier(), path, ValueError, "features.99")

    fresh = tiny_classifier()
    before = _state(fresh)
    with pytest.raises(ValueError, match="features.99"):
        fresh.load_state_dict(checkpoint["state_dict"])
    assert _same_state(_state(fresh), before) and fresh.plan.steps == []
