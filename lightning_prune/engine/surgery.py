"""Physical removal of coupled channels through torch-pruning's dependency graph.

torch-pruning finds every tensor coupled to a layer's output channels (BatchNorm, the next layer's inputs, a
Linear after flatten, all members of a residual sum, the slices of a concatenation, depthwise convolutions) and
shrinks them together. This module adds what a training run needs around it: index validation, preserved
train/eval modes, frozen flags and memory layout, and an optimizer that keeps updating the new parameters
with their momentum / Adam state sliced to the kept channels.

Structures the graph gets wrong are handled here:

- grouped convolutions (and GroupNorm): a group's channels are removed in *units*, the same local channels of
  every convolution group, so each group keeps the same width (`channel_units`, `ChannelGroup.unit`);
- channel shuffle, pixel shuffle and any reshape that splits or merges the channel axis: groups crossing one are
  refused with a reason (torch-pruning would map their indices as if nothing moved);
- the layer producing the model's output (logits, class maps) never loses a channel, as a root or as a member;
- `dry_run` cuts one unit of every candidate group on a copy and checks the forward pass and output shape;
- a cut that fails half way is rolled back (`rollback_on_error`): parameters, buffers, module attributes,
  the graph and the optimizers' param_groups/state are as before, and the exception propagates.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import itertools
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch_pruning.dependency import index_mapping as _tp_index_mapping
from torch_pruning.dependency.group import Group as _TpGroup

#: One step of a pruning history, as torch-pruning records it: [layer name, is_out_channels, removed indices].
Step = list


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together: named after the group's root layer.

    `unit` is how many root channels go at once: 1, or for a group feeding or produced by a grouped convolution
    (or a GroupNorm) one channel per convolution group (see `channel_units`).
    """

    name: str
    size: int
    members: tuple[str, ...]
    unit: int = 1


class UnsupportedModelError(ValueError):
    """The dependency graph of a model cannot be built (the message says why)."""


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


#: Functions whose output is recorded while tracing, to tell a channel-preserving reshape from a channel shuffle.
_RESHAPES = frozenset({"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"})
_CHANNEL_MIXERS = frozenset({"pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle"})


class _ShapeRecorder(TorchFunctionMode):
    """Input and output shapes of every reshape-like call, keyed by the output's autograd node."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[Any, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        fname = getattr(func, "__name__", "")
        if (fname in _RESHAPES or fname in _CHANNEL_MIXERS) and torch.is_tensor(out) and out.grad_fn is not None:
            source = args[0] if args and torch.is_tensor(args[0]) else None
            if source is not None:
                self.shapes[out.grad_fn] = (fname, tuple(source.shape), tuple(out.shape))
        return out


class _ReshapeGuard:
    """Index mapping across a reshape: stops the traversal (and records the node) when the reshape splits or
    merges the channel axis, which torch-pruning would treat as if nothing moved (e.g. a channel shuffle)."""

    def __init__(self, graph: _Graph, node: Any, inner: Callable | None) -> None:
        self.graph, self.node, self.inner = graph, node, inner

    def __call__(self, idxs: Any) -> Any:
        recorded = self.graph.reshape_shapes.get(self.node.grad_fn)
        largest = max([int(i.idx) for i in idxs] + [self.graph.reshape_largest.get(self.node, 0)])
        self.graph.reshape_largest[self.node] = largest  # a full group seen earlier decides for its subsets
        if self.node in self.graph.unmapped_reshapes or (
            recorded is not None and not _channel_axis_kept(recorded[1], recorded[2], largest)
        ):
            self.graph.blocked_hits.add(self.node)
            return []
        return self.inner(idxs) if self.inner is not None else idxs


@contextmanager
def _tolerant_reshape_mapping(graph: _Graph) -> Iterator[None]:
    """torch-pruning's reshape index mapping divides by zero on a channel shuffle and maps other channel-axis
    reshapes as identities: record such nodes and guard every dependency across a reshape (`_ReshapeGuard`)."""
    original = _tp_index_mapping.update_reshape_index_mapping

    def guarded(g: tp.DependencyGraph, node: Any) -> None:
        try:
            original(g, node)
        except ArithmeticError:
            graph.unmapped_reshapes.add(node)
        deps = list(node.dependencies) + [
            d for n in node.inputs + node.outputs for d in n.dependencies if d.target is node
        ]
        for dep in deps:
            mapping = dep.index_mapping[0]
            if not isinstance(mapping, _ReshapeGuard):
                dep.index_mapping[0] = _ReshapeGuard(graph, node, mapping)

    _tp_index_mapping.update_reshape_index_mapping = guarded
    try:
        yield
    finally:
        _tp_index_mapping.update_reshape_index_mapping = original


#: Coupled items a group may hold per node of the graph before its traversal counts as not converging.
MAX_ITEMS_PER_NODE = 8


@contextmanager
def _bounded_groups(limit: int) -> Iterator[None]:
    """torch-pruning's group traversal re-adds a dependency whenever its indices differ from those seen; around a
    partial residual (`x[:, :C] += shortcut`, ReXNet) the indices never settle and the traversal never ends. Stop
    a group at `limit` items with an error naming the cause (the group is then left whole)."""
    original = _TpGroup.add_dep

    def add_dep(group: Any, dep: Any, idxs: Any) -> None:
        if len(group.items) >= limit:
            raise RuntimeError(
                f"the dependency graph does not converge on it (over {limit} coupled items: a residual that adds "
                "to a slice of the channels, such as x[:, :C] += y)"
            )
        original(group, dep, idxs)

    _TpGroup.add_dep = add_dep
    try:
        yield
    finally:
        _TpGroup.add_dep = original


class _Graph(tp.DependencyGraph):
    """A dependency graph that survives channel shuffles and knows the shapes around every reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.unmapped_reshapes: set[Any] = set()
        self.blocked_hits: set[Any] = set()
        self.reshape_largest: dict[Any, int] = {}
        self.reshape_shapes: dict[Any, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}

    def build_dependency(self, model: nn.Module, example_inputs: Any, **kwargs: Any) -> tp.DependencyGraph:
        recorder = _ShapeRecorder()
        self.reshape_shapes = recorder.shapes

        def forward(module: nn.Module, inputs: Any) -> Any:
            with recorder:
                return module(inputs)

        kwargs.setdefault("forward_fn", forward)
        kwargs.setdefault("verbose", False)
        with _tolerant_reshape_mapping(self):
            return super().build_dependency(model, example_inputs=example_inputs, **kwargs)

    def get_pruning_group(self, module: nn.Module, pruning_fn: Callable, idxs: Sequence[int]) -> Any:
        self.blocked_hits = set()
        with _tolerant_reshape_mapping(self), _bounded_groups(MAX_ITEMS_PER_NODE * len(self.module2node)):
            group = super().get_pruning_group(module, pruning_fn, idxs)
        group.blocked_reshapes = self.blocked_hits
        return group


def build_graph(model: nn.Module, inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace the model's channel dependencies without changing its train/eval modes or frozen flags.

    Raises:
        UnsupportedModelError: torch-pruning cannot trace the model; the message names the error.
    """
    try:
        with _tracing(model), _all_trainable(model):
            return _Graph().build_dependency(model, example_inputs=inputs.clone())
    except Exception as err:  # noqa: BLE001 - any tracer failure becomes one clear error
        where = _failing_module(err, model)
        hint = (
            f" It fails at {where}: leave that module out of the network handed to the callback (prune a "
            "sub-network without it), or replace it with layers the tracer knows."
            if where
            else ""
        )
        raise UnsupportedModelError(
            f"Cannot trace the channel dependencies of {type(model).__name__}: {type(err).__name__}: {err}.{hint}"
        ) from err


def _failing_module(err: BaseException, model: nn.Module) -> str | None:
    """The module (or the operation between named modules) where tracing `model` raised `err`, from the
    innermost torch-pruning graph node or model module among the traceback's frames; None if none is found."""
    names = {m: n for n, m in model.named_modules() if n}
    node, module = None, None
    tb = err.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, tp.dependency.Node):
                node = value
            elif isinstance(value, nn.Module) and value in names:
                module = value
        tb = tb.tb_next
    if node is not None and node.module in names:
        module = node.module
    elif node is not None:
        near = [names[n.module] for n in (*node.inputs, *node.outputs) if n.module in names]
        if near:
            return f"the {type(node.module).__name__.strip('_')} next to {', '.join(repr(n) for n in near[:3])}"
    return f"{names[module]!r} ({type(module).__name__})" if module is not None else None


def out_channels(module: nn.Module) -> int:
    """The number of output channels (features) of a prunable layer or normalisation layer."""
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):  # LayerNorm2d and friends normalise over the channels
        return int(module.normalized_shape[-1])
    raise TypeError(f"{type(module).__name__} has no output channels to prune")


def _out_group(graph: tp.DependencyGraph, module: nn.Module, idxs: Sequence[int]) -> Any:
    pruner = graph.get_pruner_of_module(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, list(idxs))


def _is_out(item: Any) -> bool:
    return item.dep.handler.__name__ == "prune_out_channels" or item.dep.handler.__name__.endswith("out_channels")


def _channel_split(module: Any, is_out: bool) -> tuple[int, int]:
    """(number of channel groups, channels per group) of a module's output or input; (1, n) if ungrouped."""
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1:
        if module.groups == module.out_channels:  # depthwise: torch-pruning couples its inputs and outputs
            return 1, module.out_channels
        size = module.out_channels if is_out else module.in_channels
        return module.groups, size // module.groups
    if isinstance(module, nn.GroupNorm) and module.num_groups > 1:
        return module.num_groups, module.num_channels // module.num_groups
    return 1, 0


def _units(group: Any, size: int) -> tuple[list[list[int]], str | None]:
    """Partition of a full group's `size` root channels into units that must be removed together.

    A grouped convolution (or GroupNorm) stays valid when every one of its groups loses the same local channels,
    so root channels that reach local channel j of any group are joined. Units that would need channels outside
    this group are dropped (the returned reason says which layer); so are units holding every channel.
    """
    parent = list(range(size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    blocked: set[int] = set()
    reason = None
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.Module):
            continue
        n_groups, per_group = _channel_split(module, _is_out(item))
        if n_groups <= 1:
            continue
        roots: dict[int, list[int]] = {}
        for idx, root in zip(item.idxs, item.root_idxs, strict=True):
            roots.setdefault(int(idx), []).append(int(root))
        for local in range(per_group):
            members = [g * per_group + local for g in range(n_groups)]
            linked = [r for m in members for r in roots.get(m, [])]
            for r in linked[1:]:
                parent[find(r)] = find(linked[0])
            if linked and any(m not in roots for m in members):
                blocked.update(linked)
                reason = f"grouped layer {type(module).__name__} shares its groups with channels outside this group"
    units: dict[int, list[int]] = {}
    for i in range(size):
        units.setdefault(find(i), []).append(i)
    bad = {find(i) for i in blocked}
    kept = [u for root, u in units.items() if root not in bad and len(u) < size]
    if not kept and reason is None:
        reason = "removing one unit of channels would empty a grouped layer"
    return sorted(kept), reason if not kept else None


def _has_grouped_member(group: Any) -> bool:
    return any(
        isinstance(item.dep.target.module, nn.Module) and _channel_split(item.dep.target.module, _is_out(item))[0] > 1
        for item in group.items
    )


def channel_units(model: nn.Module, graph: tp.DependencyGraph, name: str) -> list[list[int]]:
    """The root channels of group `name` that can only be removed together, as sorted index lists.

    Every list is one channel, except around grouped convolutions / GroupNorm: there one unit holds a local
    channel of every group (e.g. `[j, j + 8, j + 16, ...]` for a 3x3 conv with 8 channels per group).
    """
    root = model.get_submodule(name)
    size = out_channels(root)
    group = _out_group(graph, root, range(size))
    if not _has_grouped_member(group):
        return [[i] for i in range(size)]
    return _units(group, size)[0]


def _channel_axis_kept(in_shape: tuple[int, ...], out_shape: tuple[int, ...], largest: int) -> bool:
    """Whether a reshape keeps every axis that could hold the channels (any axis longer than `largest`) whole."""
    if len(out_shape) == 2 and len(in_shape) >= 2 and out_shape[0] == in_shape[0]:
        return True  # flatten before a Linear: torch-pruning maps it
    candidates = [k for k in range(1, len(in_shape)) if in_shape[k] > largest]
    out_candidates = [k for k in range(1, len(out_shape)) if out_shape[k] > largest]
    if not candidates or not out_candidates:
        return False

    def kept(k: int) -> bool:
        before = math.prod(in_shape[:k])
        return any(out_shape[j] == in_shape[k] and math.prod(out_shape[:j]) == before for j in range(1, len(out_shape)))

    return all(kept(k) for k in candidates)


def _group_problem(graph: tp.DependencyGraph, group: Any, names: dict[Any, str]) -> str | None:
    """Why a (full) group cannot be pruned correctly, or None."""
    shapes = getattr(graph, "reshape_shapes", {})
    for item in group.items:
        node = item.dep.target
        if node.type == tp.ops.OPTYPE.OUTPUT or (_is_out(item) and not node.outputs):
            label = names.get(node.module, "the model output")
            return f"its channels are the model's output ({label}): the output layer keeps all its outputs"
        recorded = shapes.get(node.grad_fn)
        if recorded is not None and recorded[0] in _CHANNEL_MIXERS:
            return f"it passes a {recorded[0]}, which moves channels between positions"
    for node in getattr(group, "blocked_reshapes", ()):
        fname, in_shape, out_shape = getattr(graph, "reshape_shapes", {}).get(node.grad_fn, ("reshape", "?", "?"))
        return (
            f"it passes a {fname} from {list(in_shape)} to {list(out_shape)} that splits or merges the channel axis "
            "(e.g. a channel shuffle), which the dependency graph cannot map"
        )
    return None


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


def _prunability(
    graph: tp.DependencyGraph, group: tp.Group, names: dict[nn.Module, str], size: int
) -> tuple[str | None, int]:
    """Why a group of `size` root channels cannot be cut correctly (None: it can), and the channels of its
    smallest whole unit (1 unless a grouped convolution cuts whole groups of channels)."""
    problem = _group_problem(graph, group, names)
    if problem is None:
        try:
            _channel_maps(group, set(names), size)
        except Exception as err:  # noqa: BLE001 - a map the masks cannot use leaves the group whole
            problem = f"its channel index map fails ({type(err).__name__}: {err})"
    if problem is None and size < 2:
        problem = "it has a single channel"
    unit = 1
    if problem is None and _has_grouped_member(group):
        units, problem = _units(group, size)
        unit = min((len(u) for u in units), default=size)
    return problem, unit


def channel_groups(
    model: nn.Module,
    graph: tp.DependencyGraph,
    inputs: torch.Tensor,
    skipped: dict[str, str] | None = None,
) -> list[ChannelGroup]:
    """Every prunable convolution channel group, lowest first (by when its first member runs).

    The layer that produces the network's output is never a root nor a member: its channels are the classes.
    Groups that cannot be pruned correctly (channel shuffle, grouped layers shared with other groups, ...) are
    left out; when `skipped` is given, it receives `{root layer name: reason}` for each of them.
    """
    skipped = {} if skipped is None else skipped
    order = execution_order(model, inputs)
    by_name = dict(model.named_modules())
    names = {m: n for n, m in by_name.items()}
    last = max((m for m in order if isinstance(m, (nn.Conv2d, nn.Linear))), key=order.__getitem__, default=None)
    visited: set[nn.Module] = set()
    found: dict[str, tuple[int, ChannelGroup]] = {}
    for root in list(graph.module2node):
        if not isinstance(root, nn.Conv2d) or root in visited or root not in names:
            continue
        name = names[root]
        try:
            size = out_channels(root)
            group = _out_group(graph, root, range(size))
        except Exception as err:  # noqa: BLE001 - one bad group must not hide the others
            skipped[name] = f"the dependency graph fails on it: {type(err).__name__}: {err}"
            continue
        outs = [item.dep.target.module for item in group.items if _is_out(item)]
        visited.update(m for m in outs if isinstance(m, nn.Module))
        members = tuple(
            dict.fromkeys(
                names[item.dep.target.module]
                for item in group.items
                if isinstance(item.dep.target.module, nn.Conv2d) and item.dep.handler.__name__ == "prune_out_channels"
            )
        )
        if not members:
            continue
        if last is not None and last in outs:
            skipped[name] = f"it holds the output layer {names[last]!r}, which keeps all its outputs"
            continue
        problem, unit = _prunability(graph, group, names, size)
        if problem is not None:
            skipped[name] = problem
            continue
        first = min(order.get(by_name[m], len(order)) for m in members)
        found[name] = (first, ChannelGroup(name, size, members, unit))
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

    Zeroing those output channels (after BatchNorm) is, in eval mode, what removing them would do. A module that
    only some root channels reach (one branch of a concatenation: ghost modules, mixed-kernel convolutions) maps
    the others to its channel count, one past its last channel, which the masks leave alone; a module reached
    from several root channels (a cheap depthwise branch fed by the other) loses a channel when any of them goes.
    """
    root = model.get_submodule(name)
    size = out_channels(root)
    return _channel_maps(_out_group(graph, root, list(range(size))), set(model.modules()), size)


def _channel_maps(group: Any, modules: set[nn.Module], size: int) -> list[tuple[nn.Module, torch.Tensor]]:
    maps: dict[nn.Module, torch.Tensor] = {}
    for item in group.items:  # a module reached along several paths: each fills the root channels it maps
        module = item.dep.target.module
        if module in modules and item.dep.handler.__name__ == "prune_out_channels":
            idx = maps.setdefault(module, torch.full((size,), out_channels(module), dtype=torch.long))
            roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
            new = idx[roots] == out_channels(module)
            idx[roots[new]] = torch.as_tensor(item.idxs, dtype=torch.long)[new]
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


#: Attributes of torch-pruning's concat/split/output op nodes that its pruners change in place.
_OP_STATE = ("concat_sizes", "split_sizes", "offsets", "shape")
_GRAPH_STATE = ("_pruning_history", "_param_to_name", "module2node")
#: Containers of a module that a cut changes in place (everything else is replaced, not mutated).
_MODULE_STATE = ("_parameters", "_buffers")


class _Attrs:
    """A shallow record of an object's attributes (all of them, or only `keys`), plus a copy of the contents of
    the dicts/lists named by `contents`: those keep their identity on restore (hook handles and other references
    to them stay valid)."""

    def __init__(self, obj: Any, keys: Sequence[str] | None = None, contents: Sequence[str] = ()) -> None:
        state = vars(obj)
        self.obj, self.all = obj, keys is None
        self.attrs = dict(state) if keys is None else {k: state[k] for k in keys if k in state}
        self.contents = {k: copy.copy(self.attrs[k]) for k in contents if isinstance(self.attrs.get(k), (dict, list))}

    def restore(self) -> None:
        current = vars(self.obj)
        if self.all and len(current) != len(self.attrs):
            for key in [k for k in current if k not in self.attrs]:
                del current[key]
        current.update(self.attrs)
        for key, saved in self.contents.items():
            value = current[key]
            if isinstance(value, list):
                value[:] = saved
            else:
                value.clear()
                value.update(saved)


class CutSnapshot:
    """Everything a cut can change: each module's attributes, parameters and buffers (by reference: the
    pruners replace tensors rather than writing into them), the graph's bookkeeping and the optimizers'
    param_groups and per-parameter state. `restore()` puts it all back exactly; it can be called repeatedly."""

    def __init__(
        self,
        model: nn.Module,
        graph: tp.DependencyGraph | None = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
    ) -> None:
        modules = list(model.modules())
        self._objects = [_Attrs(m, contents=_MODULE_STATE) for m in modules]
        self._data = [(p, p.data, p.requires_grad) for p in model.parameters()]
        self._optimizers = [(opt, [list(g["params"]) for g in opt.param_groups], dict(opt.state)) for opt in optimizers]
        self._nodes: list[tuple[Any, Any]] = []
        if graph is not None:
            known = {id(m) for m in modules}
            self._objects.append(_Attrs(graph, _GRAPH_STATE, _GRAPH_STATE))
            self._nodes = [(node, node.module) for node in graph.module2node.values()]
            self._objects += [
                _Attrs(node.module, _OP_STATE, _OP_STATE)
                for node in graph.module2node.values()
                if isinstance(node.module, nn.Module) and id(node.module) not in known
            ]

    def restore(self) -> None:
        for record in self._objects:
            record.restore()
        for node, module in self._nodes:
            node.module = module
        for param, data, requires_grad in self._data:
            param.data = data
            param.requires_grad_(requires_grad)
        for opt, params, state in self._optimizers:
            for group, saved in zip(opt.param_groups, params, strict=True):
                group["params"] = list(saved)
            opt.state.clear()
            opt.state.update(state)


@contextmanager
def rollback_on_error(
    model: nn.Module,
    graph: tp.DependencyGraph | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> Iterator[CutSnapshot]:
    """Transactional cut: on any exception inside the block, restore the model (parameters, buffers, module
    attributes such as `out_channels`/`groups`/`num_features`), the graph and the optimizers (param_groups and
    state) to their state on entry, then re-raise. `prune_step` runs its cut inside one."""
    snapshot = CutSnapshot(model, graph, optimizers)
    try:
        yield snapshot
    except BaseException:
        snapshot.restore()
        raise


def _expand_to_units(graph: tp.DependencyGraph, module: nn.Module, idxs: list[int], size: int, name: str) -> list[int]:
    """`idxs` rounded to whole units (see `channel_units`): as many units as `idxs` fills, `len(idxs) // unit`
    (at least one), those holding the most of `idxs` (the lowest first on a tie). A cut of whole units never
    removes more channels than asked, unless fewer than one unit was asked; so a floor of kept channels is
    honoured in whole units (rounded up), where widening each channel to its unit would empty the layer as soon as
    the channels asked for are spread over every unit.

    Raises:
        ValueError: a requested channel belongs to no removable unit.
    """
    group = _out_group(graph, module, range(size))
    units, reason = _units(group, size)
    by_channel = {i: unit for unit in units for i in unit}
    missing = [i for i in idxs if i not in by_channel]
    if missing:
        raise ValueError(f"Channels {missing} of {name!r} cannot be removed: {reason or 'no valid unit holds them'}")
    asked = set(idxs)
    touched = sorted({tuple(by_channel[i]) for i in idxs}, key=lambda u: (-len(asked.intersection(u)), u))
    count = max(1, len(idxs) // max(len(u) for u in touched))
    return sorted(i for unit in touched[:count] for i in unit)


def prune_step(
    model: nn.Module,
    graph: tp.DependencyGraph,
    step: Step,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    rollback: bool = True,
) -> Step:
    """Apply one history step `[name, is_out_channels, idxs]` physically; return it as torch-pruning recorded it.

    Optimizers get the new parameter objects, with per-parameter state sliced to the kept channels.
    Frozen parameters stay frozen, the memory layout and every module's train/eval mode are kept.
    Around grouped convolutions `idxs` is rounded to whole units (`channel_units`, `_expand_to_units`): the
    returned step says what was removed. The cut is transactional: if anything fails after tensors started
    changing, model, graph and optimizers are restored (`rollback_on_error`) and the exception propagates;
    `rollback=False` skips that snapshot, for a caller that holds its own `CutSnapshot`.

    Raises:
        ValueError: bad indices, an unknown layer, or a group that cannot be pruned correctly (its reason).
    """
    name, is_out, idxs = step
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"The pruning plan names layer {name!r}, which this model does not have") from err
    if not is_out:
        raise ValueError(f"Step for {name!r} prunes input channels; only output-channel steps are supported")
    size = out_channels(module)
    idxs = check_indices(idxs, size, name)
    with _tracing(model):
        group = _checked_group(model, graph, module, idxs, name)
        with rollback_on_error(model, graph, optimizers) if rollback else contextlib.nullcontext():
            _cut(model, group, optimizers)
    return graph.pruning_history()[-1]


def _checked_group(model: nn.Module, graph: tp.DependencyGraph, module: nn.Module, idxs: list[int], name: str) -> Any:
    """The torch-pruning group removing `idxs` of `module` (rounded to whole units around grouped convolutions).

    Raises:
        ValueError: the group cannot be pruned correctly, or the cut would empty a coupled layer.
    """
    size = out_channels(module)
    group = _out_group(graph, module, idxs)
    if getattr(group, "blocked_reshapes", None):  # judge each reshape by the whole group's channels
        _out_group(graph, module, range(size))
        group = _out_group(graph, module, idxs)
    if _has_grouped_member(group):
        wider = _expand_to_units(graph, module, idxs, size, name)
        if wider != idxs:
            idxs = check_indices(wider, size, name)
            group = _out_group(graph, module, idxs)
    problem = _group_problem(graph, group, {m: n for n, m in model.named_modules()})
    if problem is not None:
        raise ValueError(f"Cannot prune {name!r}: {problem}")
    if not graph.check_pruning_group(group):
        raise ValueError(f"Removing {len(idxs)} channels of {name!r} would empty a coupled layer")
    return group


def _cut(model: nn.Module, group: Any, optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Prune `group`; the optimizers get the new parameters with their state sliced, frozen parameters stay frozen
    and the memory layout is kept."""
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


def replay(model: nn.Module, steps: Sequence[Step], inputs: torch.Tensor) -> tp.DependencyGraph:
    """Re-apply a recorded history to a model in the state the history started from."""
    graph = build_graph(model, inputs)
    for step in steps:
        prune_step(model, graph, step)
    return graph


def dry_run(
    model: nn.Module, groups: Sequence[ChannelGroup], inputs: torch.Tensor
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """Cut half of every group's units (channels, or one channel per convolution group; at least one) on a copy
    of `model`: a forward whose widths are hard-coded somewhere (a split into fixed-width chunks) may survive the
    loss of a single channel but not of many.

    A group passes when its cut succeeds and an eval-mode forward pass of `inputs` runs and gives the output
    shape(s) of the uncut model. One copy and one graph serve every group: all groups are cut together and checked
    with one forward pass; only when that fails are they split in halves and checked again, down to single
    groups (each batch is rolled back after its check).

    Returns:
        The groups that pass (in the given order), and `{group name: reason}` for those that fail.
    """
    if not groups:
        return [], {}
    try:
        run = _DryRun(model, inputs)
    except UnsupportedModelError as err:
        return [], {g.name: str(err) for g in groups}
    run.check(list(groups))
    return [g for g in groups if g.name not in run.failed], run.failed


class _DryRun:
    """One copy of a model and its graph on which batches of groups are cut and checked (see `dry_run`)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor) -> None:
        self.work, self.inputs = copy.deepcopy(model), inputs
        self.graph = build_graph(self.work, inputs)
        self.expected = self.forward()
        self.failed: dict[str, str] = {}

    def forward(self) -> list[tuple[int, ...]]:
        with preserved_modes(self.work), torch.no_grad():
            self.work.eval()
            return _output_shapes(self.work(self.inputs))

    def cut_half(self, group: ChannelGroup) -> None:
        """Cut every other unit of `group` (each chunk of a split loses some)."""
        whole = [[i] for i in range(group.size)]
        units = channel_units(self.work, self.graph, group.name) if group.unit > 1 else whole
        if not units:
            raise ValueError("no unit of channels can be removed")
        prune_step(self.work, self.graph, [group.name, True, [i for u in units[::2] for i in u]], rollback=False)

    def check(self, batch: Sequence[ChannelGroup]) -> None:
        """Cut `batch` together and check the output shapes; on failure, check the group whose cut raised alone
        and the others in halves. The copy is restored after each check."""
        snapshot, current = CutSnapshot(self.work, self.graph), None
        try:
            for current in batch:
                self.cut_half(current)
            current = None
            got = self.forward()
            if got != self.expected:
                raise ValueError(f"the output shape changes from {self.expected} to {got}")
        except Exception as err:  # noqa: BLE001 - every failure is a reason to skip the group
            if len(batch) == 1:
                self.failed[batch[0].name] = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
                return
            snapshot.restore()
            alone = [g for g in batch if g is current]
            rest = [g for g in batch if g is not current]
            for part in (alone, rest[: len(rest) // 2], rest[len(rest) // 2 :]):
                if part:
                    self.check(part)
        finally:
            snapshot.restore()


def _output_shapes(out: Any) -> list[tuple[int, ...]]:
    if torch.is_tensor(out):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for key in sorted(out) for s in _output_shapes(out[key])]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in _output_shapes(o)]
    return []


def candidate_groups(
    model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None = None, graph: Any = None
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The groups that can be pruned (optionally those `layers` selects), dry-run checked, and
    `{name: reason}` for every group left out. A model whose graph cannot be traced gives `([], {"<model>": why})`.

    Raises:
        ValueError: an entry of `layers` matches no group (see `select_groups`).
    """
    try:
        graph = graph if graph is not None else build_graph(model, inputs)
    except UnsupportedModelError as err:
        return [], {"<model>": str(err)}
    skipped: dict[str, str] = {}
    groups = select_groups(channel_groups(model, graph, inputs, skipped), layers)
    passing, failed = dry_run(model, groups, inputs)
    return passing, {**skipped, **failed}
