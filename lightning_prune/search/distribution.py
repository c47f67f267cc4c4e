"""RL-Pruner's learned pruning distribution (Wang & Kindratenko, 2024): how many channels each group loses.

The policy is a probability distribution over channel groups: the share of one pruning step's removed channels
that each group gives up. It starts proportional to the groups' widths (every group loses the same fraction).
Each search update draws noised copies of it (log-normal noise; with probability epsilon a uniformly random
distribution instead), turns each into per-group counts, scores it with
`Q = accuracy + alpha * MACs reduction + beta * params reduction` (all in percentage points), keeps the best
samples in an elite buffer and moves the distribution toward the elites' mean with a clipped step (before
renormalising, no entry changes by more than a factor `1 +- clip`). Epsilon decays with every update.

Which filters a count removes inside a group is `removed_filters` of the importance that
`engine.importance` computes; what the counts save is `engine.cost.CostModel`; the accuracy with several groups
masked at once is `engine.scoring.GroupScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

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


# -- which filters a count removes -------------------------------------------------------------------------


def removed_filters(importance: torch.Tensor, count: int) -> list[int]:
    """The `count` least important root channels (ties: lowest index first), sorted."""
    return sorted(torch.argsort(importance, stable=True)[: int(count)].tolist())


def keep_mask(size: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[list(removed)] = False
    return keep
