"""RL-Pruner's learned pruning distribution (Wang & Kindratenko, 2024): how many channels each group loses.

The policy is a probability distribution over channel groups: the share of one pruning step's removed channels
that each group gives up. It starts proportional to the groups' widths (every group loses the same fraction).
Each search update draws noised copies of it (log-normal noise; with probability epsilon a uniformly random
distribution instead), turns each into per-group counts, scores it with
`Q = accuracy + alpha * MACs reduction + beta * params reduction` (all in percentage points), keeps the best
samples in an elite buffer and moves the distribution toward the elites' mean with a clipped step (before
renormalising, no entry changes by more than a factor `1 +- clip`). Epsilon decays with every update.

Evaluating a sample needs three more pieces, also here: which filters a count removes inside a group
(`filter_scores`, `group_importance`, `removed_filters`), what the counts save (`CostModel`), and the accuracy
with several groups masked at once (`GroupScorer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from lightning_prune.engine.data import Batch
from lightning_prune.engine.metric import Score
from lightning_prune.engine.scoring import CandidateScorer
from lightning_prune.engine.surgery import out_channels, preserved_modes

Criterion = Literal["l1", "taylor"]
CRITERIA: tuple[str, ...] = ("l1", "taylor")
ChannelMaps = Sequence[tuple[nn.Module, torch.Tensor]]

# -- the distribution and its search ------------------------------------------------------------------------


def initial_distribution(sizes: Sequence[int]) -> torch.Tensor:
    """Proportional to the groups' widths: every group loses the same fraction of its channels."""
    widths = torch.tensor([float(s) for s in sizes], dtype=torch.float64)
    return widths / widths.sum()


def sample_distributions(
    probs: torch.Tensor, k: int, noise: float, epsilon: float, generator: torch.Generator
) -> torch.Tensor:
    """`k` distributions (rows): `probs` times log-normal noise of std `noise`, or with probability `epsilon`
    a uniformly random distribution (flat Dirichlet). The same random numbers are drawn either way."""
    n = probs.numel()
    noised = probs.double() * torch.exp(noise * torch.randn(k, n, generator=generator, dtype=torch.float64))
    uniform = -torch.rand(k, n, generator=generator, dtype=torch.float64).clamp_min(1e-12).log()
    explore = torch.rand(k, generator=generator, dtype=torch.float64) < epsilon
    samples = torch.where(explore[:, None], uniform, noised)
    return samples / samples.sum(1, keepdim=True)


def allocate(probs: torch.Tensor, total: int, capacity: torch.Tensor) -> torch.Tensor:
    """Integer counts per group proportional to `probs`, summing to `min(total, capacity.sum())`, none above its
    `capacity` (water-filling: a capped group's excess goes to the others; largest remainders, lowest index
    first on ties, round the rest)."""
    cap = capacity.long().clamp(min=0)
    counts = torch.zeros_like(cap)
    remaining = min(int(total), int(cap.sum()))
    weights = probs.double().clamp(min=0)
    open_ = cap > 0
    while remaining > 0:
        w = torch.where(open_, weights, 0.0)
        if w.sum() <= 0:  # the distribution gives nothing to the groups left: spread by capacity
            w = torch.where(open_, cap.double(), 0.0)
        share = w / w.sum() * remaining
        left = cap - counts
        full = open_ & (share >= left)
        if full.any():
            remaining -= int(left[full].sum())
            counts[full] = cap[full]
            open_ &= ~full
            continue
        base = share.floor().long()
        counts += base
        remaining -= int(base.sum())
        frac = torch.where(open_, share - base, -1.0)
        counts[torch.argsort(-frac, stable=True)[:remaining]] += 1
        remaining = 0
    return counts


def allocate_for(
    probs: torch.Tensor, capacity: torch.Tensor, saving: Callable[[torch.Tensor], float], goal: float
) -> torch.Tensor:
    """The fewest channels, spread by `allocate`, whose `saving` reaches `goal` (all the capacity if none does)."""
    lo, hi = 1, int(capacity.clamp(min=0).sum())
    if hi == 0 or saving(allocate(probs, hi, capacity)) < goal:
        return allocate(probs, hi, capacity)
    while lo < hi:
        mid = (lo + hi) // 2
        if saving(allocate(probs, mid, capacity)) >= goal:
            hi = mid
        else:
            lo = mid + 1
    return allocate(probs, lo, capacity)


def q_score(accuracy: float, macs_reduction: float, params_reduction: float, alpha: float, beta: float) -> float:
    """`Q = accuracy + alpha * 100 * macs_reduction + beta * 100 * params_reduction`: accuracy in percentage
    points, reductions as fractions of the unpruned model's cost (so every term is in points)."""
    return accuracy + 100.0 * (alpha * macs_reduction + beta * params_reduction)


def clipped_step(probs: torch.Tensor, target: torch.Tensor, lr: float, clip: float) -> torch.Tensor:
    """Move `probs` a fraction `lr` toward `target`, each entry by at most a factor `1 +- clip`, renormalised."""
    proposal = probs + lr * (target - probs)
    moved = probs * (proposal / probs).clamp(1 - clip, 1 + clip)
    return moved / moved.sum()


@dataclass(frozen=True)
class Elite:
    """One scored sample: its distribution, the per-group counts it gave and its score details (with "q")."""

    q: float
    probs: torch.Tensor
    counts: torch.Tensor
    details: dict[str, float] = field(default_factory=dict)


class EliteBuffer:
    """The `size` best samples by Q (ties: the earlier sample first)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[Elite] = []

    def push(self, elite: Elite) -> None:
        self.items.append(elite)
        self.items.sort(key=lambda e: -e.q)  # stable: earlier samples win ties
        del self.items[self.size :]

    def best(self) -> Elite:
        return self.items[0]

    def mean(self) -> torch.Tensor:
        return torch.stack([e.probs for e in self.items]).mean(0)


class DistributionSearch:
    """The learned distribution with its random stream and epsilon schedule; one `search` per pruning step.

    Args:
        sizes: the groups' widths (the initial distribution is proportional to them).
        seed: seeds the sampling stream.
        num_samples: distributions sampled per update.
        updates: updates per pruning step.
        elite_size: samples kept in the step's elite buffer.
        noise: std of the log-normal noise of a sample.
        epsilon: probability that a sample is uniformly random instead, at the first update.
        epsilon_decay: epsilon's factor per update.
        lr: fraction of the way toward the elites' mean taken per update.
        clip: largest relative change of an entry per update.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        seed: int,
        num_samples: int = 8,
        updates: int = 4,
        elite_size: int = 4,
        noise: float = 0.3,
        epsilon: float = 0.3,
        epsilon_decay: float = 0.9,
        lr: float = 0.5,
        clip: float = 0.2,
    ) -> None:
        self.probs = initial_distribution(sizes)
        self.generator = torch.Generator().manual_seed(seed)
        self.num_samples = num_samples
        self.updates = updates
        self.elite_size = elite_size
        self.noise = noise
        self.epsilon0 = epsilon
        self.epsilon_decay = epsilon_decay
        self.lr = lr
        self.clip = clip
        self.updates_done = 0

    @property
    def epsilon(self) -> float:
        return self.epsilon0 * self.epsilon_decay**self.updates_done

    def search(
        self,
        counts_of: Callable[[torch.Tensor], torch.Tensor],
        score: Callable[[torch.Tensor], list[dict[str, float]]],
    ) -> Elite:
        """Run `updates` updates, then score the learned distribution itself; return the best sample seen.

        Args:
            counts_of: per-group counts of one distribution.
            score: score details (with "q") of each row of a (samples x groups) count matrix.
        """
        buffer = EliteBuffer(self.elite_size)
        for _ in range(self.updates):
            samples = sample_distributions(self.probs, self.num_samples, self.noise, self.epsilon, self.generator)
            counts = torch.stack([counts_of(s) for s in samples])
            for probs, row, details in zip(samples, counts, score(counts), strict=True):
                buffer.push(Elite(details["q"], probs, row, details))
            self.probs = clipped_step(self.probs, buffer.mean(), self.lr, self.clip)
            self.updates_done += 1
        counts = counts_of(self.probs)
        details = score(counts[None])[0]
        buffer.push(Elite(details["q"], self.probs, counts, details))
        return buffer.best()

    def state_dict(self) -> dict[str, Any]:
        return {
            "probs": self.probs.tolist(),
            "generator": self.generator.get_state(),
            "updates_done": self.updates_done,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.probs = torch.tensor(state["probs"], dtype=torch.float64)
        self.generator.set_state(state["generator"])
        self.updates_done = int(state["updates_done"])


# -- which filters inside a group ----------------------------------------------------------------------------


def filter_scores(
    model: nn.Module,
    convs: Sequence[nn.Conv2d],
    criterion: Criterion,
    batches: Sequence[Batch] = (),
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> dict[nn.Module, torch.Tensor]:
    """Importance of every output filter of `convs` (float32, CPU).

    "l1": the L1 norm of the filter's weights. "taylor": first-order Taylor `sum |w * dL/dw|` over the filter,
    accumulated over `batches` (cross-entropy, eval mode; `.grad` and `requires_grad` are left untouched).
    """
    if criterion == "l1":
        return {c: c.weight.detach().abs().flatten(1).sum(1).float().cpu() for c in convs}
    if criterion != "taylor":
        raise ValueError(f"criterion={criterion!r} is unknown: use one of {CRITERIA}")
    weights = [c.weight for c in convs]
    totals = [torch.zeros(w.shape[0]) for w in weights]
    flags = [w.requires_grad for w in weights]
    context = forward_context or nullcontext
    try:
        with preserved_modes(model), torch.inference_mode(False), torch.enable_grad():
            model.eval()
            for w in weights:
                w.requires_grad_(True)
            for x, y in batches:
                with context():
                    loss = F.cross_entropy(model(x).float(), y)
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for total, w, g in zip(totals, weights, grads, strict=True):
                    if g is not None:
                        total += (w.detach() * g).abs().flatten(1).sum(1).float().cpu()
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    return dict(zip(convs, totals, strict=True))


def group_importance(
    group_maps: Mapping[str, ChannelMaps], scores: Mapping[nn.Module, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per root channel of each group, the summed importance of the coupled filters of its scored layers."""
    result = {}
    for name, maps in group_maps.items():
        # an index of the module's width marks a root channel that does not reach it: it adds nothing
        terms = [torch.cat([scores[m], scores[m].new_zeros(1)])[idx.cpu()] for m, idx in maps if m in scores]
        result[name] = torch.stack(terms).sum(0)
    return result


def removed_filters(importance: torch.Tensor, count: int) -> list[int]:
    """The `count` least important root channels (ties: lowest index first), sorted."""
    return sorted(torch.argsort(importance, stable=True)[: int(count)].tolist())


def keep_mask(size: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


# -- what counts save --------------------------------------------------------------------------------------


def _in_channels(module: nn.Module) -> int:
    return int(getattr(module, "in_channels", getattr(module, "in_features", 0)))


@dataclass(frozen=True)
class CostModel:
    """MACs and params of a model as a function of the root channels removed from each group.

    Each layer's cost (torch-pruning's per-layer count, the one `measure.model_cost` sums) scales with the
    fraction of its output channels kept times the fraction of its input channels kept. Layers no group
    touches as a module (activations, pooling) keep their cost, so a saving is slightly underestimated.
    """

    macs: torch.Tensor  # (layers,)
    params: torch.Tensor  # (layers,)
    out_share: torch.Tensor  # (layers, groups): fraction of a layer's outputs one root channel of a group removes
    in_share: torch.Tensor  # (layers, groups): same for its inputs

    @classmethod
    def of(cls, model: nn.Module, graph: tp.DependencyGraph, names: Sequence[str], inputs: torch.Tensor) -> CostModel:
        """Read the current per-layer costs and each group's coupled layers from the dependency graph."""
        with preserved_modes(model):
            _, _, layer_macs, layer_params = tp.utils.count_ops_and_params(model, inputs[:1], layer_wise=True)
        layers = [m for m in model.modules() if not list(m.children())]
        row = {m: i for i, m in enumerate(layers)}
        out_share = torch.zeros(len(layers), len(names), dtype=torch.float64)
        in_share = torch.zeros_like(out_share)
        for g, name in enumerate(names):
            root = model.get_submodule(name)
            size = out_channels(root)
            prune_out = graph.get_pruner_of_module(root).prune_out_channels
            group = graph.get_pruning_group(root, prune_out, list(range(size)))
            for item in group.items:
                module = item.dep.target.module
                if module not in row:
                    continue
                per_root = len(item.idxs) / size
                if item.dep.handler.__name__ == "prune_out_channels":
                    out_share[row[module], g] += per_root / out_channels(module)
                elif not (isinstance(module, nn.Conv2d) and module.groups > 1) and _in_channels(module):
                    in_share[row[module], g] += per_root / _in_channels(module)
        return cls(
            macs=torch.tensor([float(layer_macs.get(m) or 0) for m in layers], dtype=torch.float64),
            params=torch.tensor([float(layer_params.get(m) or 0) for m in layers], dtype=torch.float64),
            out_share=out_share,
            in_share=in_share,
        )

    def cost(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MACs, params) after removing `counts` root channels per group; `counts` is (groups,) or (k, groups)."""
        counts = counts.double()
        kept = (1 - counts @ self.out_share.T).clamp(min=0) * (1 - counts @ self.in_share.T).clamp(min=0)
        return kept @ self.macs, kept @ self.params


# -- accuracy with several groups masked ----------------------------------------------------------------------


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
        group_maps: Mapping[str, ChannelMaps],
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
