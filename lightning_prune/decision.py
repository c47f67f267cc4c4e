"""From scores to a decision for one layer: rewards of scored masks, the reference they are measured from, and
which mask is kept. Pure functions of scores (points) and masks, tested without a Trainer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from lightning_prune.policy import ranked_masks
from lightning_prune.reward import REWARDS, charged, fewest_within

Decision = Literal["reward", "greedy", "budget"]


def rewards(reward: str, scores: Sequence[float], kept: Sequence[int], size: int, p_ref: float, budget: float):
    """The reward of each mask keeping `kept[i]` of `size` filters and scoring `scores[i]`, against `p_ref`."""
    reward_fn = REWARDS[reward]
    return torch.tensor([reward_fn(p_ref, s, budget, size, k) for s, k in zip(scores, kept, strict=True)])


def reference(
    drop_from: Literal["start", "layer"], p_star: float, level: float, history: Iterable[Mapping[str, Any]]
) -> float:
    """The score a layer's drops are measured from: `p*` ("start"), or ("layer") the layer's own unpruned score
    `level` raised by the drops the layers pruned before it were charged."""
    if drop_from == "start":
        return p_star
    return level + charged(r["reference"] - r["decision_acc"] for r in history)


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
