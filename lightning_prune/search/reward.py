"""Rewards for one pruning action: pure functions of accuracies (percentage points) and filter counts.

Both papers multiply an accuracy term, `1 - (p* - p) / b`, by an efficiency term. `p*` is the score of the
network before the step began and `b` the step's allowance, so it budgets the drop of the whole network, not of
one layer: once earlier layers have used part of it, later layers are rewarded for pruning less. The accuracy term is
negative whenever the drop exceeds `b`, and then removing more filters is punished harder.

A candidate scoring above `p*` counts as no drop (term 1), unlike in the papers. Such a gain is noise of
the few validation images scored, and rewarding it `1/b` times would make a small `b` prune more than a
large one; capped, a larger `b` never prefers keeping more filters among the same scored candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

RewardFn = Callable[[float, float, float, int, int], float]


def accuracy_term(p_star: float, p: float, b: float) -> float:
    """`1 - max(p* - p, 0) / b`: 1 with no drop (or a gain), 0 at a drop of exactly `b`, negative beyond it."""
    if b <= 0:
        raise ValueError(f"b must be positive, got {b}")
    return 1.0 - max(p_star - p, 0.0) / b


def _check_counts(n: int, kept: int) -> int:
    if n < 1 or kept > n or kept < 0:
        raise ValueError(f"Need 0 <= kept <= n and n >= 1, got kept={kept}, n={n}")
    return max(kept, 1)  # guard: an empty layer scores as if one filter were kept instead of dividing by zero


def huang_reward(p_star: float, p: float, b: float, n: int, kept: int) -> float:
    """Huang et al. (2018): `(1 - (p* - p)/b) * log(n / kept)`; 0 when nothing is removed."""
    return accuracy_term(p_star, p, b) * math.log(n / _check_counts(n, kept))


def yang_reward(p_star: float, p: float, b: float, n: int, kept: int) -> float:
    """Yang & Xu: `(1 - (p* - p)/b) * n / kept` (a linear rather than logarithmic efficiency term)."""
    return accuracy_term(p_star, p, b) * n / _check_counts(n, kept)


REWARDS: dict[str, RewardFn] = {"huang": huang_reward, "yang": yang_reward}


def reward_values(
    reward: str, scores: Sequence[float], kept: Sequence[int], size: int, p_star: float, b: float
) -> torch.Tensor:
    """The `reward` of each mask keeping `kept[i]` of `size` filters and scoring `scores[i]`, against `p_star`."""
    reward_fn = REWARDS[reward]
    return torch.tensor([reward_fn(p_star, s, b, size, k) for s, k in zip(scores, kept, strict=True)])
