"""Rewards for one pruning action: pure functions of accuracies (percentage points) and filter counts.

Both papers multiply an accuracy term, `1 - (p* - p) / b`, by an efficiency term. `p*` is the accuracy of the
unpruned network before pruning began, so `b` budgets the drop of the whole network, not of one layer: once
earlier layers have used part of the budget, later layers are rewarded for pruning less. The accuracy term is
negative whenever the drop exceeds `b`, and then removing more filters is punished harder.
"""

from __future__ import annotations

import math
from collections.abc import Callable

RewardFn = Callable[[float, float, float, int, int], float]


def accuracy_term(p_star: float, p: float, b: float) -> float:
    """`1 - (p* - p) / b`: 1 with no drop, 0 at a drop of exactly `b`, negative beyond it."""
    if b <= 0:
        raise ValueError(f"b must be positive, got {b}")
    return 1.0 - (p_star - p) / b


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
