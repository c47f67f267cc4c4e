"""Tests of `lightning_prune.decision`: from scored masks to the kept mask, without a Trainer."""

from __future__ import annotations

import pytest
import torch

from lightning_prune import decision


def _masks(*kept: int, size: int = 4) -> torch.Tensor:
    return torch.stack([torch.arange(size) < k for k in kept])


def test_reward_decision_keeps_the_mask_of_highest_reward():
    masks = _masks(4, 3, 2, 1)
    scores = [90.0, 89.9, 89.5, 80.0]  # dropping to 1 filter costs 10 points, beyond b = 1
    assert decision.choose("reward", "huang", scores, masks, p_ref=90.0, budget=1.0) == 2


def test_budget_decision_keeps_the_fewest_filters_within_the_allowance():
    masks = _masks(4, 3, 2, 1)
    scores = [90.0, 89.9, 89.5, 88.5]
    assert decision.choose("budget", "huang", scores, masks, p_ref=90.0, budget=1.0) == 2
    assert decision.choose("budget", "huang", scores, masks, p_ref=90.0, budget=0.05) == 0  # none within: all


def test_rewards_follow_the_reward_function():
    rewards = decision.rewards("huang", [90.0, 89.0], [2, 1], size=4, p_ref=90.0, budget=2.0)
    assert rewards.tolist() == pytest.approx(
        [torch.log(torch.tensor(2.0)).item(), 0.5 * torch.log(torch.tensor(4.0)).item()]
    )


def test_reference_is_p_star_or_the_layer_level_raised_by_charged_drops():
    history = [{"reference": 90.0, "decision_acc": 89.0}, {"reference": 89.0, "decision_acc": 89.5}]
    assert decision.reference("start", 91.0, 88.0, history) == 91.0
    assert decision.reference("layer", 91.0, 88.0, history) == pytest.approx(89.0)  # a gain is charged as 0


def test_candidates_are_the_greedy_mask_then_the_ranked_counts():
    probs = torch.tensor([0.9, 0.1, 0.5, 0.7])
    masks = decision.candidates(probs, probs >= 0.5, min_keep=1, counts=4)
    assert masks[0].tolist() == [True, False, True, True]
    assert masks[1].tolist() == [True, False, False, False]  # the most likely filter alone
    assert masks[-1].all()


def test_unique_cuts_put_keeping_all_first_and_drop_repeats():
    masks = decision.unique_cuts(_masks(4, 3, 3, 2))
    assert masks.sum(1).tolist() == [4, 3, 2]
