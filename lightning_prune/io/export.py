"""Standalone model files from a pruned checkpoint: ONNX, TorchScript or a torch.export program.

The checkpoint's pruning plan rebuilds the pruned shapes on load, so the written model is the small network
itself, with a dynamic batch dimension, and needs neither this package nor Lightning to run.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from lightning_prune.engine import plan
from lightning_prune.io.checkpoint import check_writable, load_pruned
from lightning_prune.zoo.module import ImageClassifier

M = TypeVar("M", bound=nn.Module)

#: Export formats and the file suffix each writes by default.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}


@dataclass(frozen=True)
class ExportResult:
    """Where the model was written and its largest output difference from PyTorch (None: not verified)."""

    path: Path
    max_abs_diff: float | None


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


@contextmanager
def _torchscript_quietly() -> Iterator[None]:
    """Without the warnings that TorchScript (and Lightning's `to_torchscript`) is deprecated: the format says so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(torch\.jit|to_torchscript).* (is|has been) deprecated")
        yield


def export_model(model: nn.Module, fmt: str, path: str | Path, input_shape: list[int]) -> Path:
    """Write `model` (eval mode, CPU) in format `fmt` with a dynamic batch dimension; `input_shape` is [N, C, H, W].

    Raises:
        ValueError: unknown format, a file cannot be written at `path` (see `check_writable`), or TorchScript
            cannot trace `model`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = Path(path)
    check_writable(path)
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
        with _torchscript_quietly():
            try:
                if hasattr(model, "to_torchscript"):  # a LightningModule: traced without a Trainer attached
                    traced = model.to_torchscript(method="trace", example_inputs=example)
                else:
                    traced = torch.jit.trace(model, example)
            except RuntimeError as err:
                name = type(model).__name__
                raise ValueError(f"TorchScript cannot trace this {name}: {err}: use --format exported-program") from err
            torch.jit.save(traced, str(path))
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
            with _torchscript_quietly():
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
    checkpoint: str | Path,
    fmt: str,
    output: str | Path | None = None,
    verify: bool = True,
    model_class: type[nn.Module] = ImageClassifier,
) -> ExportResult:
    """Export the pruned network of `checkpoint`, a checkpoint of a `model_class` module (the network its plan
    prunes, e.g. `ImageClassifier.model`); with `verify`, compare its outputs with PyTorch's.

    Raises:
        CheckpointError: see `load_pruned`.
        ValueError: unknown format, `output` is the checkpoint, or it cannot be written (see `check_writable`).
    """
    path = output_path(checkpoint, fmt, output)
    check_writable(path)
    module = load_pruned(checkpoint, model_class)
    network, shape = plan.network_of(module), plan.plan_of(module).input_shape
    export_model(network, fmt, path, shape)
    diff = None
    if verify:
        try:
            diff = max_output_diff(path, fmt, network, shape)
        except ModuleNotFoundError:
            diff = None
    return ExportResult(path=path, max_abs_diff=diff)
