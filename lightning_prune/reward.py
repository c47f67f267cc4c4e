"""Rewards for one pruning action: pure functions of accuracies (percentage points) and filter counts.

Both papers multiply an accuracy term, `1 - (p* - p) / b`, by an efficiency term. `p*` is the score of the
network before the step began and `b` the step's allowance, so it budgets the drop of the whole network, not of
one layer: once earlier layers have used part of it, later layers are rewarded for pruning less. The accuracy term is
negative whenever the drop exceeds `b`, and then removing more filters is punished harder.

Pruned layer by layer, the earliest layers would otherwise spend the whole budget: each reward sees only its own
layer, and a few filters of a small early layer look cheap. `budget_at` spreads `b` over the layers instead.

A candidate scoring above `p*` counts as no drop (term 1), unlike in the papers. Such a gain is noise of
the few validation images scored, and rewarding it `1/b` times would make a small `b` prune more than a
large one; capped, a larger `b` never prefers keeping more filters among the same scored candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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


def budget_at(
    b: float, index: int, count: int, schedule: str = "linear", weights: Sequence[float] | None = None
) -> float:
    """The drop from `p*` (points) the network may have reached once the `index`-th (0-based) of `count` layers
    is pruned: "linear" gives layer i its share, `b * (i + 1) / count` in all (what earlier layers left unused
    carries over); "macs" gives it a share in proportion to `weights[i]` (the MACs its filters cost), so
    `b * sum(weights[:i + 1]) / sum(weights)`; "shared" lets every layer use all of `b` that is left."""
    if not 0 <= index < count:
        raise ValueError(f"Need 0 <= index < count, got index={index}, count={count}")
    if schedule == "shared":
        return b
    if schedule == "linear":
        weights = [1] * count  # an equal share per layer
    elif schedule != "macs":
        raise ValueError(f"Unknown budget schedule {schedule!r}: use 'linear', 'macs' or 'shared'")
    if weights is None or len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"The 'macs' schedule needs {count} weights >= 0 with a positive sum, got {weights}")
    return b * sum(weights[: index + 1]) / sum(weights)


def fewest_within(drops: Sequence[float], kept: Sequence[int], budget: float) -> int | None:
    """The index of the candidate keeping the fewest filters whose drop (points) is at most `budget`, the
    smaller drop among equal counts; None when every drop exceeds it."""
    if len(drops) != len(kept):
        raise ValueError(f"Need one drop per candidate, got {len(drops)} drops and {len(kept)} counts")
    within = [i for i, d in enumerate(drops) if d <= budget]
    return min(within, key=lambda i: (kept[i], drops[i])) if within else None


REWARDS: dict[str, RewardFn] = {"huang": huang_reward, "yang": yang_reward}
