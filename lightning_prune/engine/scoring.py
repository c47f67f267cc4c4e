"""Scoring candidate keep-masks of one channel group on the live model, without copies.

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

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.fx as fx
import torch.nn.functional as F
from pytorch_lightning.utilities import move_data_to_device
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader

from lightning_prune.engine.metric import Score, TopOne, Unpack, unpack_pair
from lightning_prune.engine.surgery import execution_order, out_channels

#: `(inputs, target)` on the model's device.
Batch = tuple[Any, torch.Tensor]

#: Modules applied channel by channel that map a zero channel to zero: a channel mask commutes with them.
_ZERO_KEEPING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Identity,
    nn.Dropout,
)
_ZERO_KEEPING_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d)
_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand, operator.ior)
_PER_CHANNEL = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BatchNorm = nn.modules.batchnorm._BatchNorm
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")

#: Above this fraction of removed input channels a convolution slices its input instead of masking its weights.
SLICE_FRACTION = 0.25


def _channel_scale(channels: int, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1 for kept channels, 0 for the channels `index` assigns to removed root channels (an index of `channels`
    marks a root channel that does not reach this module)."""
    scale = torch.ones(channels + 1, device=index.device)
    scale[index[~keep.to(index.device)]] = 0.0
    return scale[:channels]


def _as_layout_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _channels_last_first(module: nn.Module) -> bool:
    """Whether `module`'s output holds its channels on the last axis rather than dim 1, when both would fit:
    `nn.Linear` and a plain `nn.LayerNorm` act on the last axis (ConvNeXt's permuted blocks); convolutions and
    normalisation layers such as `LayerNorm2d` keep them on dim 1."""
    return isinstance(module, nn.Linear) or type(module) is nn.LayerNorm


def _masked(x: torch.Tensor, scale: torch.Tensor, last_first: bool, name: str) -> torch.Tensor:
    """`x` times `scale` along its channel axis: dim 1 or the last one, whichever has `len(scale)` entries
    (`last_first` decides when both do).

    Raises:
        ValueError: neither axis has that many entries.
    """
    axes = (-1, 1) if last_first else (1, -1)
    axis = next((a for a in axes if x.dim() >= 2 and x.shape[a] == len(scale)), None)
    if axis is None:
        raise ValueError(
            f"cannot mask the {len(scale)} channels of {name}: its output of shape {list(x.shape)} has them neither "
            "on dim 1 nor on the last axis"
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return x * scale.to(x.dtype).view(shape)


class _ChannelMask(nn.Module):
    """Multiplies channels (dim 1, or the last axis of a channels-last block) by the current candidate's 0/1 mask;
    always returns a new tensor."""

    def __init__(self, channels: int, index: torch.Tensor, name: str, last_first: bool) -> None:
        super().__init__()
        self.channels = channels
        self.index = index
        self.name, self.last_first = name, last_first
        self.register_buffer("scale", torch.ones(channels, device=index.device), persistent=False)

    def set(self, keep: torch.Tensor) -> None:
        self.scale.copy_(_channel_scale(self.channels, self.index, keep))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _masked(x, self.scale, self.last_first, self.name)


class _InputMaskedConv(nn.Module):
    """`conv` applied to its input with some channels zeroed: the mask is folded into a copy of the weights,
    or, when at least `SLICE_FRACTION` of the channels are removed from a plain convolution, the removed input
    channels are sliced away with the weights (what physical removal leaves)."""

    def __init__(self, conv: nn.Conv2d, index: torch.Tensor, allow_slicing: bool) -> None:
        super().__init__()
        self.conv = conv
        self.index = index
        self.allow_slicing = allow_slicing and conv.groups == 1
        self.weight: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None

    def set(self, keep: torch.Tensor) -> None:
        conv = self.conv
        scale = _channel_scale(conv.in_channels, self.index, keep)
        removed = conv.in_channels - int(scale.sum())
        self.weight, self.kept = None, None
        if removed == 0:
            return
        if self.allow_slicing and removed >= SLICE_FRACTION * conv.in_channels:
            self.kept = scale.nonzero().flatten()
            self.weight = _as_layout_of(conv.weight.index_select(1, self.kept), conv.weight)
            return
        groups, per_group = conv.groups, conv.in_channels // conv.groups
        outputs = conv.out_channels // groups
        weight_scale = scale.view(groups, 1, per_group).expand(groups, outputs, per_group)
        self.weight = conv.weight * weight_scale.reshape(conv.out_channels, per_group, 1, 1).to(conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return self.conv(x)
        if self.kept is not None:
            x = x[:, self.kept]
        return self.conv._conv_forward(x, self.weight, self.conv.bias)


Mask = _ChannelMask | _InputMaskedConv


@dataclass
class Split:
    """A model cut into what no mask affects and what each candidate must run.

    Attributes:
        prefix: input -> tuple of the mask-independent values the suffix reads (computed once per batch).
        suffix: those values -> model output, with the group's masks inside.
        masks: the mask modules in `suffix`; `set(keep)` applies a candidate.
    """

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    masks: list[Mask]

    def set(self, keep: torch.Tensor) -> None:
        for mask in self.masks:
            mask.set(keep)


def _mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the op writes into its first argument."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.kwargs.get("inplace") is True or node.target in _INPLACE_OPERATORS or name.endswith("_")
    return False


def _keeps_zero(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` applies a zero-keeping channel-wise op to `source` alone."""
    if node.args[:1] != (source,) or any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        return False
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, _ZERO_KEEPING_MODULES) and not getattr(module, "return_indices", False)
    if node.op == "call_function":
        return node.target in _ZERO_KEEPING_FUNCTIONS and not node.kwargs.get("return_indices", False)
    return node.op == "call_method" and node.target == "relu"


def _push(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """The last node of the chain of zero-keeping ops that alone consume `node`'s value."""
    while len(node.users) == 1 and _keeps_zero(next(iter(node.users)), node, modules):
        node = next(iter(node.users))
    return node


def _subsumed(site: fx.Node, index: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> bool:
    """A masked layer whose only reader is a per-channel masked layer with the same channels (conv -> BN)."""
    users = list(site.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].target not in index:
        return False
    reader = modules[users[0].target]
    return (
        isinstance(reader, _PER_CHANNEL)
        and users[0].args[:1] == (site,)
        and torch.equal(index[site.target], index[users[0].target])
    )


def _insert_masks(
    traced: fx.GraphModule, index: dict[str, torch.Tensor], allow_slicing: bool
) -> list[tuple[str, Mask]] | None:
    """Put a mask after every masked layer's output (in the reading convolution when there is just one);
    returns the (name, mask) pairs, or None when a masked layer is not in the graph."""
    graph, modules = traced.graph, dict(traced.named_modules())
    sites = [n for n in graph.nodes if n.op == "call_module" and n.target in index]
    if {n.target for n in sites} != set(index):
        return None
    plans = [(_push(site, modules), site.target) for site in sites if not _subsumed(site, index, modules)]
    masks = []
    for k, (end, target) in enumerate(plans):
        idx, layer = index[target], modules[target]
        name = f"_candidate_mask_{k}"
        readers = list(end.users)
        reader = readers[0] if len(readers) == 1 and readers[0].op == "call_module" else None
        conv = modules.get(reader.target) if reader is not None else None
        if isinstance(conv, nn.Conv2d) and reader.args == (end,) and not reader.kwargs:
            mask: Mask = _InputMaskedConv(conv, idx, allow_slicing)
            traced.add_submodule(name, mask)
            reader.target = name
        else:
            mask = _ChannelMask(out_channels(layer), idx, target, _channels_last_first(layer))
            traced.add_submodule(name, mask)
            with graph.inserting_after(end):
                node = graph.call_module(name, (end,))
            end.replace_all_uses_with(node, delete_user_cb=lambda user, node=node: user is not node)
        masks.append((name, mask))
    return masks


def _reorder_safe(graph: fx.Graph, affected: set[fx.Node], modules: dict[str, nn.Module]) -> bool:
    """Computing all mask-independent nodes first must not move an in-place op across a reader of the value
    it writes: a mask-dependent reader before an independent write, or an independent reader after a
    mask-dependent write."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    for node in graph.nodes:
        if not node.args or not isinstance(node.args[0], fx.Node) or not _mutates(node, modules):
            continue
        for reader in node.args[0].users:
            moved_before = node not in affected and reader in affected and position[reader] < position[node]
            moved_after = node in affected and reader not in affected and position[reader] > position[node]
            if moved_before or moved_after:
                return False
    return True


def split_before(
    model: nn.Module,
    channel_maps: Sequence[tuple[nn.Module, torch.Tensor]],
    allow_slicing: bool = True,
) -> Split | None:
    """Split `model` into the part that no mask of the group `channel_maps` affects and the rest.

    Args:
        model: the network; its submodules are shared, not copied.
        channel_maps: `(module, channel index per root channel)` pairs whose outputs are masked.
        allow_slicing: let a convolution that alone reads a masked value drop the removed input channels
            when many are removed (otherwise the mask is folded into its weights).

    Returns:
        The split, or None when `torch.fx` cannot trace the model or does not see every masked layer.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any untraceable model falls back to the full forward
        return None
    names = {m: n for n, m in model.named_modules()}
    index = {names[m]: idx for m, idx in channel_maps if m in names}
    masks = _insert_masks(traced, index, allow_slicing) if len(index) == len(channel_maps) else None
    if not masks:
        return None
    graph, modules = traced.graph, dict(traced.named_modules())
    mask_names = {name for name, _ in masks}
    affected: set[fx.Node] = set()
    for node in graph.nodes:
        if (
            node.op == "output"
            or (node.op == "call_module" and node.target in mask_names)
            or any(a in affected for a in node.all_input_nodes)
        ):
            affected.add(node)
    if not _reorder_safe(graph, affected, modules):
        return None
    boundary = [
        n for n in graph.nodes if n not in affected and n.op != "get_attr" and any(u in affected for u in n.users)
    ]
    prefix_graph, env = fx.Graph(), {}
    for node in graph.nodes:
        if node not in affected:
            env[node] = prefix_graph.node_copy(node, env.__getitem__)
    prefix_graph.output(tuple(env[n] for n in boundary))
    suffix_graph = fx.Graph()
    env = {n: suffix_graph.placeholder(f"cut_{i}") for i, n in enumerate(boundary)}
    for node in graph.nodes:
        if node in affected or (node.op == "get_attr" and any(u in affected for u in node.users)):
            env[node] = suffix_graph.node_copy(node, env.__getitem__)
    for cut in env.values():
        if cut.op == "placeholder" and any(u.args[:1] == (cut,) and _mutates(u, modules) for u in cut.users):
            with suffix_graph.inserting_after(cut):  # the cached value is reused by every candidate
                copy = suffix_graph.call_method("clone", (cut,))
            cut.replace_all_uses_with(copy, delete_user_cb=lambda user, copy=copy: user is not copy)
    prefix, suffix = fx.GraphModule(traced, prefix_graph), fx.GraphModule(traced, suffix_graph)
    return Split(prefix, suffix, [mask for _, mask in masks])


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
        allow_slicing: let the convolution reading a masked value drop removed input channels.
        compile_suffix: `torch.compile` the part run per candidate (masks only, no slicing: static shapes).
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
        allow_slicing: bool = True,
        compile_suffix: bool = False,
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
        self.allow_slicing = allow_slicing and not compile_suffix
        self.compile_suffix = compile_suffix
        self.calibration = list(calibration)
        self.cached = False
        #: Forward passes over the batches so far (masks scored before are answered from memory).
        self.forward_passes = 0
        self._scored: dict[bytes, float] = {}
        self._split: Split | None = None
        self._run: Callable[..., torch.Tensor] = model
        self._inputs: list[tuple[Any, ...]] = []
        self._calibration_inputs: list[tuple[Any, ...]] = []
        self._norms: list[tuple[_BatchNorm, dict[str, torch.Tensor]]] = []
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
        _restore_norms(self._norms)
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
        split = split_before(self.model, self.channel_maps, allow_slicing=self.allow_slicing) if self.cache else None
        if split is not None:
            cached = self._cache_prefix(split, inputs + calibration)
            if cached is not None:
                self._split, self.cached = split, True
                self._inputs, self._calibration_inputs = cached[: len(inputs)], cached[len(inputs) :]
                self._run = torch.compile(split.suffix) if self.compile_suffix else split.suffix
                if calibration:
                    self._norms = _save_norms(m for m in split.suffix.modules() if isinstance(m, _BatchNorm))
                return
        self._inputs, self._calibration_inputs = [(x,) for x in inputs], [(x,) for x in calibration]
        self._hooks = [m.register_forward_hook(self._hook) for m, _ in self.channel_maps]
        if calibration:
            self._norms = _save_norms(self._norms_from_first_mask(calibration[0]))

    def _norms_from_first_mask(self, x: torch.Tensor) -> list[_BatchNorm]:
        """The BatchNorm layers that run from the group's first masked layer on (all a mask can affect)."""
        order = execution_order(self.model, x[:1])
        first = min(order[m] for m, _ in self.channel_maps if m in order)
        return [m for m, i in order.items() if isinstance(m, _BatchNorm) and i >= first]

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
        return _masked(output, scale, _channels_last_first(module), type(module).__name__)

    def _apply(self, keep: torch.Tensor) -> None:
        if self._split is not None:
            self._split.set(keep)
        elif keep.all():
            self._scales = {}
        else:
            self._scales = {m: _channel_scale(out_channels(m), idx, keep) for m, idx in self.channel_maps}

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


@contextmanager
def reestimating(norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """Forwards inside the block re-estimate the running statistics of `norms` from scratch (an equal-weight
    average over the batches); their momentum and mode come back afterwards."""
    saved = [(n, n.momentum, n.training) for n in norms]
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        yield
    finally:
        for norm, momentum, training in saved:
            norm.momentum, norm.training = momentum, training


def reestimate_batchnorm(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> None:
    """Re-estimate the running statistics of every BatchNorm layer of `model` on `inputs` (the rest of the model
    runs in eval mode; modes come back afterwards). After pruning, the statistics then match the pruned network."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms or not inputs:
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), reestimating(norms), (forward_context or nullcontext)():
            for x in inputs:
                model(x)
    finally:
        for module, training in modes:
            module.training = training


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


def _save_norms(norms: Iterable[_BatchNorm]) -> list[tuple[_BatchNorm, dict[str, torch.Tensor]]]:
    """Each tracking BatchNorm layer with a copy of its statistics."""
    return [
        (n, {k: getattr(n, k).clone() for k in _NORM_STATS})
        for n in norms
        if n.track_running_stats and n.running_mean is not None
    ]


def _restore_norms(saved: Sequence[tuple[_BatchNorm, dict[str, torch.Tensor]]]) -> None:
    with torch.no_grad():
        for norm, state in saved:
            for k in _NORM_STATS:
                getattr(norm, k).copy_(state[k])


def validation_loader(trainer: pl.Trainer) -> DataLoader:
    """The first validation dataloader the Trainer was given (datamodule, module hook or `val_dataloaders`).

    Raises:
        MisconfigurationException: the Trainer has no validation data to score candidates on.
    """
    loader = _first(trainer.val_dataloaders, trainer.fit_loop.epoch_loop.val_loop)
    empty = isinstance(loader, DataLoader) and hasattr(loader.dataset, "__len__") and len(loader.dataset) == 0
    if not isinstance(loader, DataLoader) or empty:
        raise MisconfigurationException(
            "Pruning scores candidates on the validation split, but the Trainer has no validation data: pass "
            "`val_dataloaders=` to fit (or a datamodule with val_dataloader) holding data out from training "
            "(never the test split)."
        )
    return loader


def train_loader(trainer: pl.Trainer) -> DataLoader:
    """The first training dataloader the Trainer was given (also before Lightning loads it).

    Raises:
        MisconfigurationException: the Trainer has no training dataloader.
    """
    loader = _first(trainer.train_dataloader, trainer.fit_loop)
    if not isinstance(loader, DataLoader):
        raise MisconfigurationException("Pruning needs training batches: give the Trainer a train dataloader.")
    return loader


def _first(loaded: Any, loop: Any) -> Any:
    """The first of the loaders Lightning has loaded (`trainer.train_dataloader` / `trainer.val_dataloaders`), else
    of those the loop's source gives now. Lightning loads them only when its loop starts (`setup_data`, which also
    starts iterating, so the callbacks never call it): before, at `on_fit_start`, the private `loop._data_source`
    (Lightning 2.x) is the only way to the datamodule's or module's loader hooks."""
    if loaded is None:
        source = loop._data_source
        loaded = source.dataloader() if source.is_defined() else None
    return loaded[0] if isinstance(loaded, (list, tuple)) and loaded else loaded


def first_batches(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    split: Literal["train", "val"],
    count: int,
    seed: int | None = None,
    shuffle: bool = False,
    unpack: Unpack = unpack_pair,
) -> list[Batch]:
    """The first `count` batches of a split read in order, as `unpack` splits them into `(inputs, target)`, on the
    module's device: the same on every rank (no distributed sampler), drawn under a forked RNG so augmentation
    leaves the training run's random stream alone. With `seed`, augmentation draws from that seed: the same
    batches on every rank and after a resume; with `shuffle`, the batches are drawn from the whole split in an
    order fixed by `seed`."""
    loader = validation_loader(trainer) if split == "val" else train_loader(trainer)
    convert = trainer.precision_plugin.convert_input
    batches = []
    for batch in drawn_batches(loader, count, seed, shuffle):
        x, y = unpack(batch)
        batches.append((convert(move_data_to_device(x, pl_module.device)), move_data_to_device(y, pl_module.device)))
    return batches


def drawn_batches(loader: DataLoader, count: int, seed: int | None = None, shuffle: bool = False) -> list[Batch]:
    """The first `count` batches of `loader`'s dataset, read by a plain loader under a forked RNG (seeded with
    `seed`, if given), so the caller's random stream is left alone."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        sequential = DataLoader(
            loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn, shuffle=shuffle
        )
        return list(itertools.islice(sequential, count))


def batch_count(loader: DataLoader) -> int | None:
    """How many batches `drawn_batches` can read from `loader`'s dataset (None: the dataset has no length)."""
    if not hasattr(loader.dataset, "__len__"):
        return None
    return math.ceil(len(loader.dataset) / (loader.batch_size or 1))
