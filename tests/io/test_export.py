from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import onnxruntime
import pytest
import torch

from lightning_prune.io.checkpoint import CheckpointError, check_writable, load_pruned, read_checkpoint
from lightning_prune.io.cli import main
from lightning_prune.io.export import FORMATS, export_checkpoint, export_model, output_path


def _logits(module, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, 1, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        return x, module.model.eval()(x)


def test_load_pruned_rebuilds_pruned_shapes(tiny_checkpoints, tiny_pruned_layers):
    module = load_pruned(tiny_checkpoints["pruned"])
    assert not module.training
    for name, removed in tiny_pruned_layers.items():
        fresh = load_pruned(tiny_checkpoints["unpruned"]).model.get_submodule(name).out_channels
        assert module.model.get_submodule(name).out_channels == fresh - len(removed)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_round_trip_matches_pytorch(tiny_checkpoints, tmp_path, capsys, fmt):
    out = tmp_path / f"model{FORMATS[fmt]}"
    assert main(["export", str(tiny_checkpoints["pruned"]), "--format", fmt, "--output", str(out)]) == 0
    assert f"Wrote {fmt} model to {out}" in capsys.readouterr().out
    module = load_pruned(tiny_checkpoints["pruned"])
    for batch in (1, 3):
        x, expected = _logits(module, batch)
        if fmt == "onnx":
            session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            assert isinstance(session.get_inputs()[0].shape[0], str)  # the batch dimension is symbolic
            got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        elif fmt == "torchscript":
            got = torch.jit.load(str(out))(x)
        else:
            got = torch.export.load(out).module()(x)
        assert got.shape == (batch, 10)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_pruned_export_is_smaller_than_unpruned(tiny_checkpoints, tmp_path, fmt):
    pruned = export_checkpoint(tiny_checkpoints["pruned"], fmt, tmp_path / f"pruned{FORMATS[fmt]}", verify=False)
    unpruned = export_checkpoint(tiny_checkpoints["unpruned"], fmt, tmp_path / f"dense{FORMATS[fmt]}", verify=False)
    assert pruned.max_abs_diff is None
    assert pruned.path.stat().st_size < 0.8 * unpruned.path.stat().st_size


def test_export_checkpoint_verifies_outputs(tiny_checkpoints, tmp_path):
    result = export_checkpoint(tiny_checkpoints["pruned"], "onnx", tmp_path / "m.onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


def test_default_output_is_next_to_checkpoint(tiny_checkpoints, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    shutil.copy(tiny_checkpoints["pruned"], ckpt)
    assert main(["export", str(ckpt), "--format", "exported-program"]) == 0
    assert (tmp_path / "run.pt2").is_file()
    assert output_path(ckpt, "onnx") == tmp_path / "run.onnx"
    assert output_path(ckpt, "torchscript") == tmp_path / "run.pt"


def test_never_overwrites_the_checkpoint(tiny_checkpoints, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoints["pruned"], ckpt)
    before = ckpt.read_bytes()
    assert main(["export", str(ckpt), "--format", "torchscript"]) == 2
    assert "Refusing to overwrite the checkpoint" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.ckpt"), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint at" in err and "Traceback" not in err
    assert not (tmp_path / "nope.onnx").exists()


@pytest.mark.parametrize("content", ["truncated", "text"])
def test_unreadable_checkpoint_is_a_clear_error(tiny_checkpoints, tmp_path, capsys, content):
    bad = tmp_path / "bad.ckpt"
    data = tiny_checkpoints["pruned"].read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else b"not a checkpoint\n")
    assert main(["export", str(bad), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "is not a readable PyTorch checkpoint" in err and err.count("\n") == 1
    with pytest.raises(CheckpointError):
        read_checkpoint(bad)


def test_pickled_objects_are_not_loaded(tmp_path):
    path = tmp_path / "numpy.ckpt"
    torch.save({"state_dict": {}, "extra": np.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="holds a pickled `numpy"):
        read_checkpoint(path)


def test_checkpoint_of_another_module_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of a module pruned by lightning_prune"):
        read_checkpoint(path)


def test_unknown_format_is_refused(tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_checkpoints["pruned"]), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Unknown export format 'tflite'"):
        export_model(torch.nn.Linear(2, 2), "tflite", tmp_path / "x", [1, 2])


def _refuse_writes(monkeypatch, folder):
    """`folder` made read-only (pytest's clean-up restores it); as root, whom permission bits do not stop, the
    OS's refusal is simulated."""
    folder.chmod(0o555)
    if os.geteuid() == 0:

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", ["parent is a file", "is a folder", "folder not writable"])
def test_bad_output_path_is_a_clear_error(tiny_checkpoints, tmp_path, capsys, monkeypatch, fmt, case):
    if case == "parent is a file":
        (tmp_path / "file").write_text("")
        out, expected = tmp_path / "file" / "sub" / "model.out", f"'{tmp_path / 'file'}' is a file, not a folder"
    elif case == "is a folder":
        out, expected = tmp_path, "it is a folder"
    else:
        (tmp_path / "locked").mkdir()
        _refuse_writes(monkeypatch, tmp_path / "locked")
        out, expected = tmp_path / "locked" / "model.out", "Permission denied"
    assert main(["export", str(tiny_checkpoints["pruned"]), "--format", fmt, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lightning-prune export: error: Cannot write '{out}': {expected}"), err
    assert err.count("\n") == 1 and "pass --output" in err
    assert not out.is_file()


def test_check_writable_accepts_new_folders_and_existing_files(tmp_path):
    check_writable(tmp_path / "new" / "folders" / "model.onnx")
    assert not (tmp_path / "new").exists()  # nothing is created by the check
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"old")
    check_writable(existing)
    assert existing.read_bytes() == b"old"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder: pass --plot"):
        check_writable(tmp_path / "file" / "x.png", "--plot")


def test_export_model_refuses_a_bad_path_before_tracing(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        export_model(torch.nn.Linear(2, 2), "onnx", tmp_path / "file" / "m.onnx", [1, 2])
