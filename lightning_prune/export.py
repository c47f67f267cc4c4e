"""Standalone model files from a pruned checkpoint: ONNX, TorchScript or a torch.export program.

The checkpoint's pruning plan rebuilds the pruned shapes on load, so the written model is the small network
itself, with a dynamic batch dimension, and needs neither this package nor Lightning to run.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_prune.module import ImageClassifier

#: Export formats and the file suffix each writes by default.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


class CheckpointError(Exception):
    """A file that cannot be used as a lightning-prune checkpoint."""


@dataclass(frozen=True)
class ExportResult:
    """Where the model was written and its largest output difference from PyTorch (None: not verified)."""

    path: Path
    max_abs_diff: float | None


def _load_error(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return CheckpointError(
            f"'{path}' holds a pickled `{unsafe.group(1)}`: only tensors and plain data are loaded "
            "(`torch.load(weights_only=True)`), so save the checkpoint without that object"
        )
    reason = ""  # an unpickling error's text is about weights_only, not about the file
    if text.strip() and not isinstance(err, pickle.UnpicklingError):
        reason = ": " + text.strip().splitlines()[0].split(". ")[0]
    return CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt file?){reason}")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint of an `ImageClassifier` as plain data (tensors, numbers, strings, lists, dicts).

    Raises:
        CheckpointError: no such file, an unreadable (truncated, corrupt) file, or not an ImageClassifier checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at '{path}': pass the path of a .ckpt file saved by the Trainer")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _load_error(path, err) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"'{path}' is not a Lightning checkpoint: it has no `state_dict`")
    if "_extra_state" not in checkpoint["state_dict"]:
        raise CheckpointError(
            f"'{path}' is not a checkpoint of a lightning_prune ImageClassifier: its state dict has no pruning plan"
        )
    return checkpoint


def load_classifier(path: str | Path) -> ImageClassifier:
    """The checkpoint's `ImageClassifier` on the CPU in eval mode, rebuilt to its pruned shapes.

    Raises:
        CheckpointError: see `read_checkpoint`, or the module cannot be rebuilt from its saved hyper-parameters.
    """
    checkpoint = read_checkpoint(path)
    if "model" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointError(
            f"'{path}' was saved from an ImageClassifier around a custom nn.Module, which the checkpoint does "
            "not record: load it with `ImageClassifier.load_from_checkpoint(path, model=your_network)`"
        )
    try:
        module = ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"Cannot rebuild the model saved in '{path}': {err}") from err
    return module.eval()


def output_path(checkpoint: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """`output`, or the checkpoint's path with the format's suffix; never the checkpoint itself.

    Raises:
        ValueError: unknown format, or the output would overwrite the checkpoint.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    checkpoint = Path(checkpoint)
    path = Path(output) if output is not None else checkpoint.with_suffix(FORMATS[fmt])
    if path.resolve() == checkpoint.resolve():
        raise ValueError(f"Refusing to overwrite the checkpoint '{checkpoint}': pass another --output path")
    return path


def export_model(model: nn.Module, fmt: str, path: str | Path, input_shape: list[int]) -> Path:
    """Write `model` (eval mode, CPU) in format `fmt` with a dynamic batch dimension; `input_shape` is [N, C, H, W]."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    example = (torch.randn(2, *input_shape[1:]),)  # batch 2: a batch of 1 would be specialised
    dynamic = ({0: torch.export.Dim("batch")},)
    if fmt == "onnx":
        torch.onnx.export(
            model,
            example,
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=DeprecationWarning)
            torch.jit.save(torch.jit.trace(model, example), str(path))
    else:
        torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), path)
    return path


def _run_exported(path: Path, fmt: str, x: torch.Tensor) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")(x).numpy()
        return torch.export.load(path).module()(x).numpy()


def max_output_diff(
    path: str | Path, fmt: str, model: nn.Module, input_shape: list[int], batch_sizes: tuple[int, ...] = (1, 3)
) -> float:
    """Largest absolute difference between the exported file's logits and `model`'s on random batches.

    ONNX files run in onnxruntime (`ModuleNotFoundError` when it is not installed).
    """
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    model = model.eval()
    for batch in batch_sizes:
        x = torch.randn(batch, *input_shape[1:], generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        got = _run_exported(Path(path), fmt, x)
        if got.shape != expected.shape:
            raise ValueError(f"The exported model returned shape {got.shape} for batch {batch}, not {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_checkpoint(
    checkpoint: str | Path, fmt: str, output: str | Path | None = None, verify: bool = True
) -> ExportResult:
    """Export the pruned network of `checkpoint`; with `verify`, compare its outputs with PyTorch's.

    Raises:
        CheckpointError: see `read_checkpoint`.
        ValueError: unknown format, or `output` is the checkpoint.
    """
    path = output_path(checkpoint, fmt, output)
    module = load_classifier(checkpoint)
    export_model(module.model, fmt, path, module.plan.input_shape)
    diff = None
    if verify:
        try:
            diff = max_output_diff(path, fmt, module.model, module.plan.input_shape)
        except ModuleNotFoundError:
            diff = None
    return ExportResult(path=path, max_abs_diff=diff)
