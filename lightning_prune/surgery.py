"""Physical removal of coupled channels through torch-pruning's dependency graph.

torch-pruning finds every tensor coupled to a layer's output channels (BatchNorm, the next layer's inputs, a
Linear after flatten, all members of a residual sum, the slices of a concatenation, depthwise convolutions) and
shrinks them together. This module adds what a training run needs around it: index validation, preserved
train/eval modes, frozen flags and memory layout, and an optimizer that keeps updating the new parameters
with their momentum / Adam state sliced to the kept channels.
"""

from __future__ import annotations

import fnmatch
import itertools
import operator
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

#: One step of a pruning history, as torch-pruning records it: [layer name, is_out_channels, removed indices].
Step = list


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together: named after the group's root layer."""

    name: str
    size: int
    members: tuple[str, ...]


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit (torch-pruning's tracer leaves the model in eval)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _tracing(model: nn.Module) -> Iterator[None]:
    """Autograd on (Lightning's validation hooks run in inference mode) and modes restored afterwards."""
    with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():
        yield


def example_input(model: nn.Module, shape: Sequence[int]) -> torch.Tensor:
    """A zero input of `shape` on the model's device and in its floating dtype (a bf16 model traces with bf16)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(tuple(shape), dtype=dtype, device=device)


@contextmanager
def _all_trainable(model: nn.Module) -> Iterator[None]:
    """Frozen parameters made trainable for the duration (the tracer follows autograd: a frozen first layer
    has no `grad_fn` and would be missing from the graph, so its coupled layers would not be pruned with it)."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def build_graph(model: nn.Module, inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace the model's channel dependencies without changing its train/eval modes or frozen flags."""
    with _tracing(model), _all_trainable(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=inputs.clone())


def out_channels(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"{type(module).__name__} has no output channels to prune")


def _out_group(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int]):
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, idxs)


def execution_order(model: nn.Module, inputs: torch.Tensor) -> dict[nn.Module, int]:
    """Each leaf module of `model` with the position of its first call in an eval-mode forward of `inputs`."""
    order: dict[nn.Module, int] = {}

    def record(module: nn.Module, _: Any) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with preserved_modes(model), torch.no_grad():
            model.eval()
            model(inputs)
    finally:
        for h in hooks:
            h.remove()
    return order


def channel_groups(model: nn.Module, graph: tp.DependencyGraph, inputs: torch.Tensor) -> list[ChannelGroup]:
    """Every prunable convolution channel group, lowest first (by when its first member runs).

    The layer that produces the network's output is never a root: its channels are the classes.
    """
    order = execution_order(model, inputs)
    by_name = dict(model.named_modules())
    names = {m: n for n, m in by_name.items()}
    last = max((m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))), key=order.__getitem__, default=None)
    found: dict[str, tuple[int, ChannelGroup]] = {}
    for group in graph.get_all_groups(ignored_layers=[last] if last is not None else [], root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        members = tuple(
            dict.fromkeys(
                names[item.dep.target.module]
                for item in group.items
                if isinstance(item.dep.target.module, nn.Conv2d) and item.dep.handler.__name__ == "prune_out_channels"
            )
        )
        if root not in names or not members:
            continue
        first = min(order.get(by_name[m], len(order)) for m in members)
        found[names[root]] = (first, ChannelGroup(names[root], out_channels(root), members))
    return [g for _, g in sorted(found.values(), key=lambda pair: pair[0])]


def select_groups(groups: Sequence[ChannelGroup], layers: Sequence[str] | None) -> list[ChannelGroup]:
    """Groups named by `layers` (layer names or fnmatch patterns, matched against every member), in that order.

    Raises:
        ValueError: an entry matches no prunable group; the message lists the groups there are.
    """
    if layers is None:
        return list(groups)
    chosen: dict[str, ChannelGroup] = {}
    for pattern in layers:
        matches = [g for g in groups if any(fnmatch.fnmatchcase(m, pattern) for m in (g.name, *g.members))]
        if not matches:
            available = ", ".join(g.name for g in groups)
            raise ValueError(
                f"`layers` entry {pattern!r} matches no prunable convolution group of this model. "
                f"Use one of these layer names (or a pattern over them): {available}"
            )
        chosen.update((g.name, g) for g in matches if g.name not in chosen)
    return list(chosen.values())


def output_channel_maps(model: nn.Module, graph: tp.DependencyGraph, name: str) -> list[tuple[nn.Module, torch.Tensor]]:
    """Modules whose output channels belong to group `name`, each with its own channel index per root channel.

    Zeroing those output channels (after BatchNorm) is, in eval mode, what removing them would do.
    """
    root = model.get_submodule(name)
    group = _out_group(graph, root, list(range(out_channels(root))))
    modules = set(model.modules())
    maps: dict[nn.Module, torch.Tensor] = {}
    for item in group.items:
        module = item.dep.target.module
        if module in modules and item.dep.handler.__name__ == "prune_out_channels" and module not in maps:
            idx = torch.empty(len(item.idxs), dtype=torch.long)
            idx[torch.as_tensor(item.root_idxs)] = torch.as_tensor(item.idxs)
            maps[module] = idx
    return list(maps.items())


def check_indices(idxs: Iterable[int], size: int, name: str) -> list[int]:
    """Sorted, validated channel indices (torch-pruning silently corrupts a layer given bad ones).

    Raises:
        ValueError: non-integer or duplicate indices, indices outside [0, size), or all channels of the layer.
    """
    idxs = list(idxs)
    try:
        values = [operator.index(i) for i in idxs]  # ints, numpy ints, integer tensors; never 1.5 -> 1
    except TypeError as err:
        raise ValueError(f"Channel indices for {name!r} must be integers, got {idxs}") from err
    if len(set(values)) != len(values):
        raise ValueError(f"Channel indices for {name!r} contain duplicates: {sorted(values)}")
    bad = [i for i in values if not 0 <= i < size]
    if bad:
        raise ValueError(f"Channel indices {bad} are out of range for {name!r}, which has {size} channels")
    if len(values) >= size:
        raise ValueError(f"Removing all {size} channels of {name!r} would empty the layer; keep at least one")
    return sorted(values)


def _is_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
    )


def _kept_along_dims(
    old: torch.Tensor, new: torch.Tensor, removed: list[tuple[bool, list[int]]]
) -> list[tuple[int, torch.Tensor]] | None:
    """Kept indices per shrunk dimension: the combination of the group's removed index sets for this module
    (`(is_out, idxs)`; output sets tried first for dim 0, input sets for the others) that turns `old` into `new`.
    A module can meet a group twice with sets of equal length: a layer whose output joins a residual stream
    that its input also reads (through a concatenation) loses output channel i and input channel offset + i."""
    dims, options = [], []
    for dim, (a, b) in enumerate(zip(old.shape, new.shape, strict=True)):
        if a == b:
            continue
        ordered = sorted(removed, key=lambda entry: entry[0] != (dim == 0))
        sets = dict.fromkeys(frozenset(r) for _, r in ordered if r and len(set(r)) == a - b and max(r) < a)
        dims.append(dim)
        options.append([torch.tensor([i for i in range(a) if i not in r], dtype=torch.long) for r in sets])
    value = old.detach()
    for combo in itertools.product(*options):
        sliced = value
        for dim, idx in zip(dims, combo, strict=True):
            sliced = sliced.index_select(dim, idx.to(value.device))
        if torch.equal(sliced, new.detach()):
            return list(zip(dims, combo, strict=True))
    return None


def _remap_optimizer(
    optimizer: torch.optim.Optimizer,
    old: nn.Parameter,
    new: nn.Parameter,
    kept: list[tuple[int, torch.Tensor]] | None,
) -> None:
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state is None or kept is None:
        return
    sliced = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            for dim, idx in kept:
                value = value.index_select(dim, idx.to(value.device))
        sliced[key] = value
    optimizer.state[new] = sliced


def prune_step(
    model: nn.Module,
    graph: tp.DependencyGraph,
    step: Step,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> Step:
    """Apply one history step `[name, is_out_channels, idxs]` physically; return it as torch-pruning recorded it.

    Optimizers get the new parameter objects, with per-parameter state sliced to the kept channels.
    Frozen parameters stay frozen, the memory layout and every module's train/eval mode are kept.
    """
    name, is_out, idxs = step
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"The pruning plan names layer {name!r}, which this model does not have") from err
    if not is_out:
        raise ValueError(f"Step for {name!r} prunes input channels; only output-channel steps are supported")
    idxs = check_indices(idxs, out_channels(module), name)
    with _tracing(model):
        group = _out_group(graph, module, idxs)
        if not graph.check_pruning_group(group):
            raise ValueError(f"Removing {len(idxs)} channels of {name!r} would empty a coupled layer")
        channels_last = _is_channels_last(model)
        before = dict(model.named_parameters())
        frozen = {n for n, p in before.items() if not p.requires_grad}
        removed: dict[nn.Module, list[tuple[bool, list[int]]]] = {}
        for item in group.items:
            is_out_set = item.dep.handler.__name__ == "prune_out_channels"
            removed.setdefault(item.dep.target.module, []).append((is_out_set, list(item.idxs)))
        group.prune()
        modules = dict(model.named_modules())
        for pname, new in model.named_parameters():
            old = before.get(pname)
            if old is None or old is new:
                continue
            new.requires_grad_(pname not in frozen)
            owner = modules[pname.rpartition(".")[0]]
            kept = _kept_along_dims(old, new, removed.get(owner, []))
            for optimizer in optimizers:
                _remap_optimizer(optimizer, old, new, kept)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    return graph.pruning_history()[-1]


def replay(model: nn.Module, steps: Sequence[Step], inputs: torch.Tensor) -> tp.DependencyGraph:
    """Re-apply a recorded history to a model in the state the history started from."""
    graph = build_graph(model, inputs)
    for step in steps:
        prune_step(model, graph, step)
    return graph
