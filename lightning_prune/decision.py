"""From scores to decisions: for one layer, the rewards of scored masks and which mask is kept; for the run,
whether another step is taken and how much it may forecast to cost. Pure functions of scores (points) and masks,
tested without a Trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from lightning_prune.policy import ranked_masks
from lightning_prune.reward import REWARDS, fewest_within

Decision = Literal["reward", "greedy", "budget"]


def rewards(reward: str, scores: Sequence[float], kept: Sequence[int], size: int, p_ref: float, budget: float):
    """The reward of each mask keeping `kept[i]` of `size` filters and scoring `scores[i]`, against `p_ref`."""
    reward_fn = REWARDS[reward]
    return torch.tensor([reward_fn(p_ref, s, budget, size, k) for s, k in zip(scores, kept, strict=True)])


def choose(
    decision: Decision, reward: str, scores: Sequence[float], masks: torch.Tensor, p_ref: float, budget: float
) -> int:
    """The index of the mask kept among `masks` scoring `scores` (one of them keeps all): the highest reward
    ("reward"), or the fewest filters whose drop from `p_ref` is within `budget` ("budget"; none within keeps
    all)."""
    kept = masks.sum(1).tolist()
    if decision == "budget":
        best = fewest_within([p_ref - s for s in scores], kept, budget)
        return best if best is not None else kept.index(max(kept))
    return int(rewards(reward, scores, kept, masks.shape[1], p_ref, budget).argmax())


def candidates(probs: torch.Tensor, greedy: torch.Tensor, min_keep: int, counts: int) -> torch.Tensor:
    """The agent's greedy mask and the masks keeping its `counts` counts of most likely filters."""
    return torch.cat([greedy[None], ranked_masks(probs, min_keep, counts)])


def unique_cuts(masks: torch.Tensor) -> torch.Tensor:
    """Keeping all, then each distinct mask of `masks` that removes something."""
    full = torch.ones_like(masks[0])
    unique = list({tuple(m.tolist()): m for m in masks if not m.all()}.values())
    return torch.stack([full, *unique])


#: A step may stop short of `b` by this fraction of it: closer, another step is not worth its search.
CLOSE_ENOUGH = 0.1
#: Bounds of `forecast_scale`.
SCALE_BOUNDS = (0.5, 2.0)


def stop_reason(b: float, drop: float, room: bool) -> str | None:
    """Why no further step is taken with the network's measured `drop` (None: take one). `room`: whether the run
    has the epochs for another step and its fine-tuning."""
    if drop >= (1 - CLOSE_ENOUGH) * b:
        return "the drop is within a tenth of b"
    if not room:
        return "no epochs left for another step and its fine-tuning"
    return None


def retry_caps(removed: Mapping[str, int]) -> dict[str, int]:
    """After a step that removed `removed[group]` filters cost more than b: how many each group may lose in the
    step that retries it, half as many (a group the step left whole stays whole)."""
    return {name: count // 2 for name, count in removed.items()}


def forecast_scale(allowance: float, increment: float) -> float:
    """How many points the next step's search may forecast per point of measured budget left: the last step's
    allowance over the drop it measurably added after fine-tuning, within `SCALE_BOUNDS`. The search scores cuts
    before any fine-tuning and stops where the reward peaks, so its forecast overstates what a cut costs."""
    low, high = SCALE_BOUNDS
    if increment <= 0:
        return high
    return min(max(allowance / increment, low), high)
