"""The fx split behind fast candidate scoring: one channel group's mask moved to where its outputs are used.

While one group is searched, every value that does not depend on its mask is the same for all candidates.
`split_before` traces the model with `torch.fx`, inserts the mask where each masked layer's output is used (moved
past channel-wise ops that keep zeros, such as ReLU and pooling, and folded into the weights of a convolution that
reads it), and splits the graph into the mask-independent nodes (the prefix, computed once per batch and cached by
`engine.scoring.CandidateScorer`) and the mask-dependent ones (the suffix, run per candidate). In a plain chain the
suffix is everything after the layer; in residual and concatenating networks the independent branches are cached
too.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from lightning_prune.engine.surgery import out_channels

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

#: Above this fraction of removed input channels a convolution slices its input instead of masking its weights.
SLICE_FRACTION = 0.25


def channel_scale(channels: int, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """1 for kept channels, 0 for the channels `index` assigns to removed root channels (an index of `channels`
    marks a root channel that does not reach this module)."""
    scale = torch.ones(channels + 1, device=index.device)
    scale[index[~keep.to(index.device)]] = 0.0
    return scale[:channels]


def _as_layout_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if ref.dim() == 4 and not ref.is_contiguous() and ref.is_contiguous(memory_format=torch.channels_last):
        return t.contiguous(memory_format=torch.channels_last)
    return t


def channels_last_first(module: nn.Module) -> bool:
    """Whether `module`'s output holds its channels on the last axis rather than dim 1, when both would fit:
    `nn.Linear` and a plain `nn.LayerNorm` act on the last axis (ConvNeXt's permuted blocks); convolutions and
    normalisation layers such as `LayerNorm2d` keep them on dim 1."""
    return isinstance(module, nn.Linear) or type(module) is nn.LayerNorm


def masked(x: torch.Tensor, scale: torch.Tensor, last_first: bool, name: str) -> torch.Tensor:
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
        self.scale.copy_(channel_scale(self.channels, self.index, keep))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked(x, self.scale, self.last_first, self.name)


class _InputMaskedConv(nn.Module):
    """`conv` applied to its input with some channels zeroed: the mask is folded into a copy of the weights,
    or, when at least `SLICE_FRACTION` of the channels are removed from a plain convolution, the removed input
    channels are sliced away with the weights (what physical removal leaves)."""

    def __init__(self, conv: nn.Conv2d, index: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.index = index
        self.allow_slicing = conv.groups == 1
        self.weight: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None

    def set(self, keep: torch.Tensor) -> None:
        conv = self.conv
        scale = channel_scale(conv.in_channels, self.index, keep)
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


def _insert_masks(traced: fx.GraphModule, index: dict[str, torch.Tensor]) -> list[tuple[str, Mask]] | None:
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
            mask: Mask = _InputMaskedConv(conv, idx)
            traced.add_submodule(name, mask)
            reader.target = name
        else:
            mask = _ChannelMask(out_channels(layer), idx, target, channels_last_first(layer))
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


def split_before(model: nn.Module, channel_maps: Sequence[tuple[nn.Module, torch.Tensor]]) -> Split | None:
    """Split `model` into the part that no mask of the group `channel_maps` affects and the rest. A convolution that
    alone reads a masked value drops the removed input channels when many are removed (`SLICE_FRACTION`), else the
    mask is folded into its weights.

    Args:
        model: the network; its submodules are shared, not copied.
        channel_maps: `(module, channel index per root channel)` pairs whose outputs are masked.

    Returns:
        The split, or None when `torch.fx` cannot trace the model or does not see every masked layer.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any untraceable model falls back to the full forward
        return None
    names = {m: n for n, m in model.named_modules()}
    index = {names[m]: idx for m, idx in channel_maps if m in names}
    masks = _insert_masks(traced, index) if len(index) == len(channel_maps) else None
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
    prefix_graph, suffix_graph = _cut(graph, affected, modules)
    prefix, suffix = fx.GraphModule(traced, prefix_graph), fx.GraphModule(traced, suffix_graph)
    return Split(prefix, suffix, [mask for _, mask in masks])


def _cut(graph: fx.Graph, affected: set[fx.Node], modules: dict[str, nn.Module]) -> tuple[fx.Graph, fx.Graph]:
    """The prefix graph (every node no mask affects, returning the values the suffix reads) and the suffix graph
    (the affected nodes, reading those values as placeholders; a value an in-place op would change is cloned)."""
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
    return prefix_graph, suffix_graph
