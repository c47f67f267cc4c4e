"""Tests of `lightning_prune.decision`: from scored masks to the kept mask, and from measured drops to whether
another step is taken and what it may forecast, without a Trainer."""

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


def test_candidates_are_the_greedy_mask_then_the_ranked_counts():
    probs = torch.tensor([0.9, 0.1, 0.5, 0.7])
    masks = decision.candidates(probs, probs >= 0.5, min_keep=1, counts=4)
    assert masks[0].tolist() == [True, False, True, True]
    assert masks[1].tolist() == [True, False, False, False]  # the most likely filter alone
    assert masks[-1].all()


def test_unique_cuts_put_keeping_all_first_and_drop_repeats():
    masks = decision.unique_cuts(_masks(4, 3, 3, 2))
    assert masks.sum(1).tolist() == [4, 3, 2]


# -- the run: another step or not, and the forecast of the next one -------------------------------------------


def test_a_step_is_taken_while_the_drop_is_clearly_below_b_and_epochs_are_left():
    assert decision.stop_reason(1.0, 0.0, room=True) is None  # before the first step, or after undone ones
    assert decision.stop_reason(1.0, 0.5, room=True) is None
    below = (1 - decision.CLOSE_ENOUGH) * 2.0 - 1e-9
    assert decision.stop_reason(2.0, below, room=True) is None


def test_a_drop_within_a_tenth_of_b_ends_pruning():
    reason = "the drop is within a tenth of b"
    assert decision.stop_reason(2.0, (1 - decision.CLOSE_ENOUGH) * 2.0, room=True) == reason
    assert decision.stop_reason(2.0, 2.0, room=True) == reason
    assert decision.stop_reason(2.0, 2.0, room=False) == reason  # before the lack of epochs


def test_no_room_for_a_step_and_its_fine_tuning_ends_pruning():
    reason = "no epochs left for another step and its fine-tuning"
    assert decision.stop_reason(1.0, 0.0, room=False) == reason
    assert decision.stop_reason(1.0, 0.2, room=False) == reason


def test_a_retried_step_may_remove_half_of_what_the_undone_one_removed_per_group():
    assert decision.retry_caps({"a": 8, "b": 5, "c": 1, "d": 0}) == {"a": 4, "b": 2, "c": 0, "d": 0}
    caps = {"a": 8}
    for expected in (4, 2, 1, 0):  # undone again and again, the cuts shrink to nothing: pruning ends
        caps = decision.retry_caps(caps)
        assert caps == {"a": expected}


def test_forecast_scale_is_the_allowance_over_the_measured_increment_within_bounds():
    low, high = decision.SCALE_BOUNDS
    assert (low, high) == (0.5, 2.0)
    assert decision.forecast_scale(1.0, 0.5) == pytest.approx(2.0)
    assert decision.forecast_scale(0.6, 0.4) == pytest.approx(1.5)
    assert decision.forecast_scale(1.0, 0.1) == high  # 10, capped
    assert decision.forecast_scale(0.1, 1.0) == low  # 0.1, floored
    assert decision.forecast_scale(2.0, 4.0) == low  # exactly the lower bound
    assert decision.forecast_scale(4.0, 2.0) == high  # exactly the upper bound


@pytest.mark.parametrize("increment", [0.0, -0.3])
def test_forecast_scale_of_a_step_that_added_no_drop_is_the_upper_bound(increment):
    assert decision.forecast_scale(1.0, increment) == decision.SCALE_BOUNDS[1]
    assert decision.forecast_scale(0.01, increment) == decision.SCALE_BOUNDS[1]
