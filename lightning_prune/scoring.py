"""Scoring candidate keep-masks of one channel group on the live model, without copies.

A candidate is applied as channel masks on the outputs of the group's layers (after BatchNorm, zeroing a channel
is, in eval mode, exactly what removing it does). While one layer is searched, everything that runs before it is
fixed, so its activations are computed once per batch and each candidate runs only the rest of the network.
The cut is made with `torch.fx` at the last point that every path to the layer passes through (residual and
concatenating networks cut before the block); a model fx cannot trace falls back to the full forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.fx as fx
from torch import nn

from lightning_prune.surgery import out_channels, preserved_modes

Batch = tuple[torch.Tensor, torch.Tensor]


def _subgraph(root: fx.GraphModule, nodes: Sequence[fx.Node], start: fx.Node | None, result: fx.Node) -> fx.GraphModule:
    """A module computing `result` from the value of `start` (a new placeholder) through `nodes`."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    if start is not None:
        env[start] = graph.placeholder("cut")
    for node in nodes:
        if node in env:
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(env[result])
    module = fx.GraphModule(root, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def split_before(model: nn.Module, modules: Sequence[nn.Module]) -> tuple[Callable, Callable] | None:
    """Split `model` into prefix and suffix at the latest node before any of `modules` through which every
    path passes. Returns None when fx cannot trace the model or no useful cut exists."""
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any untraceable model falls back to the full forward
        return None
    names = {m: n for n, m in model.named_modules()}
    targets = {names[m] for m in modules if m in names}
    nodes = list(traced.graph.nodes)
    first = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in targets), None)
    if first is None:
        return None
    position = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((position[u] for u in n.users), default=-1) for n in nodes}
    cut = None
    for i in range(first):
        live = [n for n in nodes[: i + 1] if n.op != "get_attr" and last_use[n] > i]
        if live == [nodes[i]] and nodes[i].op != "placeholder":
            cut = i
    if cut is None:
        return None
    output = next(n for n in nodes if n.op == "output")
    consts = [n for n in nodes[: cut + 1] if n.op == "get_attr"]
    prefix = _subgraph(traced, nodes[: cut + 1], None, nodes[cut])
    suffix = _subgraph(traced, consts + nodes[cut + 1 : -1], nodes[cut], output.args[0])
    return prefix, suffix


class CandidateScorer(AbstractContextManager):
    """Top-1 accuracy (percentage points) of the model with some channels of one group masked.

    Use as a context manager: on entry the model goes to eval mode, mask hooks are installed and the prefix
    activations are cached; on exit everything is restored. Masks index the group's root channels.

    Args:
        model: the network (modified only transiently: hooks and memory layout).
        channel_maps: `(module, channel index per root channel)` pairs from `surgery.output_channel_maps`.
        batches: validation batches `(x, y)` already on the model's device.
        forward_context: the Trainer precision's forward context (autocast), or None.
        cache: run only the part of the network after the cut for each candidate.
        max_cache_mb: above this, cached activations are dropped and the full forward is used.
        channels_last: score in channels_last layout (faster for convolutions on CPU and with AMP).
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
    ) -> None:
        self.model = model
        self.channel_maps = [(m, idx.to(next(iter(m.parameters()), idx).device)) for m, idx in channel_maps]
        self.size = len(channel_maps[0][1])
        self.batches = batches
        self.forward_context = forward_context or nullcontext
        self.cache = cache
        self.max_cache_bytes = max_cache_mb * 2**20
        self.channels_last = channels_last
        self._masks: dict[nn.Module, torch.Tensor | None] = {}
        self._inputs: list[torch.Tensor] = []
        self._run: Callable = model
        self.cached = False

    def _hook(self, module: nn.Module, _: object, output: torch.Tensor) -> torch.Tensor | None:
        mask = self._masks.get(module)
        if mask is None:
            return None
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * mask.to(output.dtype).view(shape)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    @contextmanager
    def _session(self) -> Iterator[None]:
        was_channels_last = any(
            p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
            for p in self.model.parameters()
        )
        hooks = [m.register_forward_hook(self._hook) for m, _ in self.channel_maps]
        try:
            with preserved_modes(self.model):
                self.model.eval()
                if self.channels_last:
                    self.model.to(memory_format=torch.channels_last)
                yield
        finally:
            for h in hooks:
                h.remove()
            if self.channels_last and not was_channels_last:
                self.model.to(memory_format=torch.contiguous_format)

    def __enter__(self) -> CandidateScorer:
        self._stack = self._session()
        self._stack.__enter__()
        try:
            self._prepare()
        except BaseException:
            self._stack.__exit__(None, None, None)
            raise
        return self

    def _prepare(self) -> None:
        self._inputs = [self._layout(x) for x, _ in self.batches]
        self._run = self.model
        split = split_before(self.model, [m for m, _ in self.channel_maps]) if self.cache else None
        if split is not None:
            prefix, suffix = split
            cached, total = [], 0
            with torch.inference_mode(), self.forward_context():
                for x in self._inputs:
                    out = prefix(x)
                    total += out.numel() * out.element_size()
                    if total > self.max_cache_bytes:
                        break
                    cached.append(self._layout(out))
            if total <= self.max_cache_bytes:
                self._inputs, self._run, self.cached = cached, suffix, True

    def __exit__(self, *exc: object) -> None:
        self._inputs, self._run, self.cached = [], self.model, False
        self._stack.__exit__(*exc)

    def accuracy(self, keep: torch.Tensor | None = None) -> float:
        """Accuracy with the channels where `keep` is False masked (None: the model as it is)."""
        self._masks = {}
        if keep is not None:
            keep = keep.to(torch.bool)
            for module, idx in self.channel_maps:
                mask = torch.ones(out_channels(module), device=idx.device)
                mask[idx[~keep.to(idx.device)]] = 0.0
                self._masks[module] = mask
        correct, total = 0, 0
        with torch.inference_mode(), self.forward_context():
            for x, (_, y) in zip(self._inputs, self.batches, strict=True):
                correct += int((self._run(x).argmax(-1) == y).sum())
                total += y.numel()
        self._masks = {}
        return 100.0 * correct / max(total, 1)
