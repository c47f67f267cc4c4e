"""Reading pruned checkpoints for the commands (`export`, `report`), and checking the files they will write."""

from __future__ import annotations

import importlib
import os
import pickle
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lightning_prune.engine import plan
from lightning_prune.engine.plan import PLAN_KEY
from lightning_prune.zoo.module import ImageClassifier

M = TypeVar("M", bound=nn.Module)


class CheckpointError(Exception):
    """A file that cannot be used as a lightning-prune checkpoint."""


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
