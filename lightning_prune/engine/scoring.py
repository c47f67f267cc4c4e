"""Scoring candidate keep-masks of one channel group on the live model, without copies (`CandidateScorer`), and a
network's score on batches (`evaluate`).

A candidate zeroes the group's removed channels at the outputs of the group's layers (after BatchNorm, zeroing
a channel is, in eval mode, exactly what removing it does).

While one group is searched, every value that does not depend on its mask is the same for all candidates. The
engine (`cache=True`) traces the model with `torch.fx`, inserts the mask where each masked layer's output is
used (moved past channel-wise ops that keep zeros, such as ReLU and pooling, and folded into the weights of a
convolution that reads it), computes every mask-independent node once per batch (the prefix) and caches the
values it hands to mask-dependent nodes. Each candidate then runs only the mask-dependent nodes (the suffix).
In a plain chain this is everything after the layer; in residual and concatenating networks the independent
branches are cached too. A model `torch.fx` cannot trace, or a cache over `max_cache_mb`, falls back to the full
forward with the masks applied by forward hooks.

Removing channels shifts the statistics that every later BatchNorm layer sees, so an unadjusted candidate
scores far below what the pruned network is worth. With `calibration` inputs, each candidate first
re-estimates the running statistics of the BatchNorm layers its mask affects on those inputs (the adaptive
BatchNorm evaluation of EagleEye, Li et al. 2020): its accuracy is then that of the pruned network with
consistent statistics, far closer to what it reaches after fine-tuning, and the model's own statistics are
restored afterwards. The engine re-estimates the BatchNorm layers of the suffix (for a plain chain, exactly what
physical removal followed by re-estimation gives); the full-forward fallback re-estimates every BatchNorm layer
from the group's first layer on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from lightning_prune.engine.batchnorm import BatchNorm, reestimating, restore_norms, save_norms
from lightning_prune.engine.data import Batch
from lightning_prune.engine.metric import Score, TopOne
from lightning_prune.engine.split import Split, channel_scale, channels_last_first, masked, split_before
from lightning_prune.engine.surgery import execution_order, out_channels


class CandidateScorer(AbstractContextManager):
    """The score (points of `score`, top-1 accuracy by default) of the model with some channels of one group
    removed.

    Use as a context manager: on entry the model goes to eval mode (and channels_last), and the prefix
    activations are cached or the mask hooks installed; on exit modes, layout and hooks are restored, also
    when the block raises. Masks index the group's root channels. The model and batches are fixed while the
    scorer is open, so a mask scored before returns its stored accuracy without a forward pass (a converging
    agent samples the same mask again and again).

    Args:
        model: the network (modified only transiently: modes, hooks and memory layout).
        channel_maps: `(module, channel index per root channel)` pairs from `surgery.output_channel_maps`.
        batches: validation batches `(x, y)` already on the model's device.
        forward_context: the Trainer precision's forward context (autocast), or None.
        cache: run only the mask-dependent part of the network per candidate (see the module docstring).
        max_cache_mb: above this the cached activations are dropped and the full forward is used.
        channels_last: score in channels_last layout (faster for convolutions on CPU and with AMP).
        calibration: inputs (training images on the model's device) on which each candidate re-estimates the
            running statistics of the BatchNorm layers its mask affects before it is scored; empty: scored with
            the model's statistics.
        score: what a candidate is scored on (`lightning_prune.engine.metric`; None: top-1 accuracy).

    Example::

        with CandidateScorer(model, maps, batches) as scorer:
            base = scorer.accuracy()
            accs = [scorer.accuracy(mask) for mask in masks]
    """

    def __init__(
        self,
        model: nn.Module,
        channel_maps: Sequence[tuple[nn.Module, torch.Tensor]],
        batches: Sequence[Batch],
        forward_context: Callable[[], AbstractContextManager] | None = None,
        cache: bool = True,
        max_cache_mb: float = 1024.0,
        channels_last: bool = True,
        calibration: Sequence[torch.Tensor] = (),
        score: Score | None = None,
    ) -> None:
        if not channel_maps:
            raise ValueError("CandidateScorer needs at least one (module, channel index) pair to mask")
        self.model = model
        self.channel_maps = [(m, idx.to(next(iter(m.parameters()), idx).device)) for m, idx in channel_maps]
        self.size = len(channel_maps[0][1])
        self.batches = batches
        self.forward_context = forward_context or nullcontext
        self.score = score or TopOne()
        self.cache = cache
        self.max_cache_bytes = max_cache_mb * 2**20
        self.channels_last = channels_last
        self.calibration = list(calibration)
        self.cached = False
        #: Forward passes over the batches so far (masks scored before are answered from memory).
        self.forward_passes = 0
        self._scored: dict[bytes, float] = {}
        self._split: Split | None = None
        self._run: Callable[..., torch.Tensor] = model
        self._inputs: list[tuple[Any, ...]] = []
        self._calibration_inputs: list[tuple[Any, ...]] = []
        self._norms: list[tuple[BatchNorm, dict[str, torch.Tensor]]] = []
        self._scales: dict[nn.Module, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._layouts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._modes: list[tuple[nn.Module, bool]] = []

    # -- entering and leaving ------------------------------------------------------------------------

    def __enter__(self) -> CandidateScorer:
        self._modes = [(m, m.training) for m in self.model.modules()]
        try:
            self.model.eval()
            if self.channels_last:
                self._to_channels_last()
            self._prepare()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        for tensor, data in self._layouts:
            tensor.data = data
        for module, training in self._modes:
            module.training = training
        restore_norms(self._norms)
        self._hooks, self._layouts, self._modes, self._scales, self._scored = [], [], [], {}, {}
        self._split, self._run, self._inputs, self.cached = None, self.model, [], False
        self._calibration_inputs, self._norms = [], []

    def _to_channels_last(self) -> None:
        """Convert 4-d parameters and buffers in place, remembering the originals for `__exit__`."""
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
                self._layouts.append((tensor, tensor.data))
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _prepare(self) -> None:
        inputs = [self._layout(x) for x, _ in self.batches]
        calibration = [self._layout(x) for x in self.calibration]
        split = split_before(self.model, self.channel_maps) if self.cache else None
        if split is not None:
            cached = self._cache_prefix(split, inputs + calibration)
            if cached is not None:
                self._split, self.cached = split, True
                self._inputs, self._calibration_inputs = cached[: len(inputs)], cached[len(inputs) :]
                self._run = split.suffix
                if calibration:
                    self._norms = save_norms(m for m in split.suffix.modules() if isinstance(m, BatchNorm))
                return
        self._inputs, self._calibration_inputs = [(x,) for x in inputs], [(x,) for x in calibration]
        self._hooks = [m.register_forward_hook(self._hook) for m, _ in self.channel_maps]
        if calibration:
            self._norms = save_norms(self._norms_from_first_mask(calibration[0]))

    def _norms_from_first_mask(self, x: torch.Tensor) -> list[BatchNorm]:
        """The BatchNorm layers that run from the group's first masked layer on (all a mask can affect)."""
        order = execution_order(self.model, x[:1])
        first = min(order[m] for m, _ in self.channel_maps if m in order)
        return [m for m, i in order.items() if isinstance(m, BatchNorm) and i >= first]

    def _cache_prefix(self, split: Split, inputs: list[torch.Tensor]) -> list[tuple[Any, ...]] | None:
        """The prefix's values for every batch, or None as soon as they exceed `max_cache_mb`."""
        cached, storages = [], {}
        with torch.inference_mode(), self.forward_context():
            for x in inputs:
                values = split.prefix(x)
                for v in values:
                    if isinstance(v, torch.Tensor):
                        storage = v.untyped_storage()
                        storages[storage.data_ptr()] = storage.nbytes()
                if sum(storages.values()) > self.max_cache_bytes:
                    return None
                cached.append(tuple(values))
        return cached

    # -- scoring ----------------------------------------------------------------------------------------

    def _hook(self, module: nn.Module, _: object, output: torch.Tensor) -> torch.Tensor | None:
        scale = self._scales.get(module)
        if scale is None:
            return None
        return masked(output, scale, channels_last_first(module), type(module).__name__)

    def _apply(self, keep: torch.Tensor) -> None:
        if self._split is not None:
            self._split.set(keep)
        elif keep.all():
            self._scales = {}
        else:
            self._scales = {m: channel_scale(out_channels(m), idx, keep) for m, idx in self.channel_maps}

    def accuracy(self, keep: torch.Tensor | None = None) -> float:
        """Accuracy with the channels where `keep` is False removed (None: the model as it is)."""
        if keep is None:
            keep = torch.ones(self.size, dtype=torch.bool)
        elif keep.numel() != self.size:
            raise ValueError(f"The keep mask has {keep.numel()} entries but the group has {self.size} channels")
        keep = keep.to(torch.bool)
        key = keep.cpu().numpy().tobytes()
        if key not in self._scored:
            self._scored[key] = self._forward_accuracy(keep)
        return self._scored[key]

    def _forward_accuracy(self, keep: torch.Tensor) -> float:
        """The score of a candidate; NaN when its outputs or its score are not finite."""
        self.forward_passes += 1
        self.score.reset()
        with torch.inference_mode():
            self._apply(keep)
            self._calibrate()
            with self.forward_context():
                for args, (_, y) in zip(self._inputs, self.batches, strict=True):
                    preds = self._run(*args)
                    if not finite(preds):
                        return math.nan
                    self.score.update(preds, y)
        return finite_or_nan(self.score.compute())

    def _calibrate(self) -> None:
        """Re-estimate the affected BatchNorm statistics on the calibration inputs."""
        if self._norms:
            with reestimating([n for n, _ in self._norms]), self.forward_context():
                for args in self._calibration_inputs:
                    self._run(*args)


def evaluate(
    model: nn.Module,
    batches: Sequence[Batch],
    forward_context: Callable[[], AbstractContextManager] | None = None,
    score: Score | None = None,
) -> float:
    """The score (points; None: top-1 accuracy) of `model` in eval mode on `batches`, NaN when its outputs or the
    score are not finite; modes are restored."""
    score = score or TopOne()
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    score.reset()
    try:
        with torch.no_grad(), (forward_context or nullcontext)():
            for x, y in batches:
                preds = model(x)
                if not finite(preds):
                    return math.nan
                score.update(preds, y)
    finally:
        for module, training in modes:
            module.training = training
    return finite_or_nan(score.compute())


def finite(preds: Any) -> bool:
    """Whether every floating-point tensor among a model's outputs (a tensor, or a tuple, list or dict of them) is
    finite."""
    if isinstance(preds, dict):
        return all(finite(v) for v in preds.values())
    if isinstance(preds, (list, tuple)):
        return all(finite(v) for v in preds)
    return not (torch.is_tensor(preds) and preds.is_floating_point()) or bool(torch.isfinite(preds).all())


def finite_or_nan(value: float) -> float:
    """`value`, or NaN when it is infinite (every non-finite score reads the same)."""
    return float(value) if math.isfinite(value) else math.nan


class GroupScorer(CandidateScorer):
    """`CandidateScorer` removing channels of several groups at once: `accuracy_of({group name: keep mask})`.

    A sample touches most groups, so nothing before its first masked layer is worth caching: candidates run
    the full forward with the groups' output channels masked by `CandidateScorer`'s forward hooks.

    Args:
        model: the network (modified only transiently).
        group_maps: per group name, its `surgery.output_channel_maps`.
        batches: validation batches `(x, y)` already on the model's device.
        forward_context: the Trainer precision's forward context (autocast), or None.
        calibration: training inputs on which each sample re-estimates the statistics of the BatchNorm layers
            from the first masked layer on before it is scored (empty: scored with the model's statistics).
        score: what a sample is scored on (None: top-1 accuracy).
    """

    def __init__(
        self,
        model: nn.Module,
        group_maps: Mapping[str, Sequence[tuple[nn.Module, torch.Tensor]]],
        batches: Sequence[Batch],
        forward_context: Callable[[], AbstractContextManager] | None = None,
        calibration: Sequence[torch.Tensor] = (),
        score: Score | None = None,
    ) -> None:
        unique = {m: idx for maps in group_maps.values() for m, idx in maps}
        super().__init__(
            model, list(unique.items()), batches, forward_context, cache=False, calibration=calibration, score=score
        )
        self.group_maps = {
            name: [(m, idx.to(next(iter(m.parameters()), idx).device)) for m, idx in maps]
            for name, maps in group_maps.items()
        }
        self._pending: dict[nn.Module, torch.Tensor] = {}

    def _apply(self, keep: torch.Tensor) -> None:
        self._scales = self._pending  # the masks come from `accuracy_of`, not from the one-group `keep`

    def accuracy_of(self, keeps: Mapping[str, torch.Tensor]) -> float:
        """The score (points) with the channels where each group's keep mask is False removed."""
        scales: dict[nn.Module, torch.Tensor] = {}
        for name, keep in keeps.items():
            for module, idx in self.group_maps[name]:
                # one slot past the channels: an index of `out_channels` marks a root channel not reaching `module`
                scale = scales.setdefault(module, torch.ones(out_channels(module) + 1, device=idx.device))
                scale[idx[~keep.to(device=idx.device, dtype=torch.bool)]] = 0.0
        self._pending = {module: scale[:-1] for module, scale in scales.items()}
        try:  # not remembered: the one-group key `accuracy` remembers by cannot tell these masks apart
            return self._forward_accuracy(torch.ones(self.size, dtype=torch.bool))
        finally:
            self._pending = {}
