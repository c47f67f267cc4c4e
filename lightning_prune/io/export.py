"""Standalone model files from a pruned checkpoint: ONNX, TorchScript or a torch.export program.

The checkpoint's pruning plan rebuilds the pruned shapes on load, so the written model is the small network
itself, with a dynamic batch dimension, and needs neither this package nor Lightning to run.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from lightning_prune.engine import plan
from lightning_prune.engine.plan import PLAN_KEY
from lightning_prune.zoo.module import ImageClassifier

M = TypeVar("M", bound=nn.Module)

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
    """Load a Lightning checkpoint of a module pruned by this package as plain data (tensors, numbers, strings,
    lists, dicts).

    Raises:
        CheckpointError: no such file, an unreadable (truncated, corrupt) file, or a checkpoint without a pruning plan.
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
    if PLAN_KEY not in checkpoint["state_dict"]:
        raise CheckpointError(
            f"'{path}' is not a checkpoint of a module pruned by lightning_prune: its state dict has no pruning plan"
        )
    return checkpoint


def import_model_class(dotted: str) -> type[nn.Module]:
    """The LightningModule class at import path `dotted` ("package.module.ClassName"), looked up from the current
    folder too, as `python -m` does.

    Raises:
        ValueError: the path does not import, or names no LightningModule class.
    """
    fix = "pass the import path of your LightningModule class, e.g. --model-class lightning_prune.ImageClassifier"
    module_name, _, name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"--model-class {dotted!r} is not a dotted path package.module.ClassName: {fix}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except ImportError as err:
        raise ValueError(f"--model-class {dotted!r} does not import ({err}): {fix}") from err
    except AttributeError as err:
        raise ValueError(f"--model-class {dotted!r}: module {module_name!r} has no {name!r}: {fix}") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "load_from_checkpoint")):
        raise ValueError(f"--model-class {dotted!r} is not a LightningModule class: {fix}")
    return cls


def load_pruned(path: str | Path, cls: type[M] = ImageClassifier) -> M:
    """The checkpoint's module of class `cls` on the CPU in eval mode, rebuilt to its pruned shapes
    (`lightning_prune.engine.plan.load_module`).

    Raises:
        CheckpointError: see `read_checkpoint`, or the module cannot be rebuilt from its saved hyper-parameters.
    """
    checkpoint = read_checkpoint(path)
    if issubclass(cls, ImageClassifier) and "model" not in checkpoint.get("hyper_parameters", {}):
        raise CheckpointError(
            f"'{path}' records no `model` hyper-parameter: it was saved from another LightningModule class (pass "
            "it as --model-class) or from an ImageClassifier around a custom nn.Module (load it with "
            "`ImageClassifier.load_from_checkpoint(path, model=your_network)`)"
        )
    try:
        module = plan.load_module(cls, path)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        reason = textwrap.shorten(str(err), 500)  # one line: a state-dict mismatch lists every key on its own line
        raise CheckpointError(
            f"Cannot rebuild the {cls.__name__} saved in '{path}' (is it the class that saved the checkpoint? pass "
            f"that one as --model-class): {reason}"
        ) from err
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


def check_writable(path: str | Path, flag: str = "--output") -> None:
    """Check, without writing anything, that a file can be written at `path` (missing folders are created then).

    Raises:
        ValueError: `path` is a folder, a folder on its way is a file, or the file or folder is not writable;
            the one-line message names `path` and says what to pass as `flag` instead.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"Cannot write '{path}': it is a folder: pass {flag} a file path")
    folder = next(p for p in [*path.parents] if p.exists())
    if not folder.is_dir():
        raise ValueError(f"Cannot write '{path}': '{folder}' is a file, not a folder: pass {flag} a path in a folder")
    try:
        if path.exists():
            open(path, "ab").close()  # appends nothing: only checks that the file opens for writing
        else:
            tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        where = "the file" if path.exists() else f"a new file in '{folder}'"
        raise ValueError(
            f"Cannot write '{path}': {err.strerror or err} ({where}): pass {flag} a path you can write to"
        ) from err


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
