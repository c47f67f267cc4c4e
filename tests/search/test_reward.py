"""Tests of `lightning_prune.search.reward` against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lightning_prune.search.reward import REWARDS, accuracy_term, huang_reward, reward_values, yang_reward


def test_accuracy_term() -> None:
    assert accuracy_term(90.0, 90.0, 2.0) == 1.0
    assert accuracy_term(90.0, 89.0, 2.0) == pytest.approx(0.5)
    assert accuracy_term(90.0, 88.0, 2.0) == pytest.approx(0.0)
    assert accuracy_term(90.0, 91.0, 2.0) == 1.0  # a gain over the unpruned network counts as no drop
    assert accuracy_term(90.0, 86.0, 2.0) == pytest.approx(-1.0)


def test_huang_hand_computed() -> None:
    # (1 - (90 - 89.5) / 1) * ln(64 / 16) = 0.5 * ln 4
    assert huang_reward(90.0, 89.5, 1.0, 64, 16) == pytest.approx(0.5 * math.log(4))
    assert huang_reward(80.0, 80.0, 2.0, 10, 5) == pytest.approx(math.log(2))


def test_yang_hand_computed() -> None:
    # (1 - (90 - 89.5) / 1) * 64 / 16 = 2
    assert yang_reward(90.0, 89.5, 1.0, 64, 16) == pytest.approx(2.0)
    assert yang_reward(80.0, 80.0, 2.0, 10, 10) == pytest.approx(1.0)


def test_huang_nothing_removed_is_zero() -> None:
    assert huang_reward(90.0, 90.0, 1.0, 32, 32) == 0.0
    assert huang_reward(90.0, 80.0, 1.0, 32, 32) == 0.0


@pytest.mark.parametrize("fn", [huang_reward, yang_reward])
def test_empty_layer_is_scored_as_one_filter_kept(fn) -> None:
    value = fn(90.0, 85.0, 10.0, 32, 0)
    assert math.isfinite(value)
    assert value == fn(90.0, 85.0, 10.0, 32, 1)


@pytest.mark.parametrize("fn", [huang_reward, yang_reward])
def test_drop_beyond_budget_is_negative_and_worse_with_more_removed(fn) -> None:
    assert fn(90.0, 87.0, 2.0, 32, 16) < 0
    assert fn(90.0, 87.0, 2.0, 32, 8) < fn(90.0, 87.0, 2.0, 32, 16)
    assert fn(90.0, 89.0, 2.0, 32, 8) > fn(90.0, 89.0, 2.0, 32, 16) > 0  # within budget: more removed is better


@pytest.mark.parametrize("fn", [huang_reward, yang_reward])
@pytest.mark.parametrize(
    ("b", "n", "kept", "match"),
    [
        (0.0, 10, 5, "b must be positive"),
        (-1.0, 10, 5, "b must be positive"),
        (1.0, 10, 11, "kept=11"),
        (1.0, 10, -1, "kept=-1"),
        (1.0, 0, 0, "n=0"),
    ],
)
def test_invalid_arguments_raise(fn, b: float, n: int, kept: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(90.0, 89.0, b, n, kept)


def test_registry() -> None:
    assert REWARDS == {"huang": huang_reward, "yang": yang_reward}


@pytest.mark.parametrize("fn", [huang_reward, yang_reward])
def test_larger_budget_never_prefers_keeping_more(fn) -> None:
    """Among the same scored candidates (kept, accuracy), the best for a larger b keeps no more filters."""
    candidates = [(64, 90.4), (56, 90.6), (48, 89.9), (40, 89.2), (32, 88.1), (24, 86.0), (16, 80.0)]
    best = [max(candidates, key=lambda c: fn(90.0, c[1], b, 64, c[0]))[0] for b in (0.25, 0.5, 1.0, 2.0, 3.0, 6.0)]
    assert best == sorted(best, reverse=True)
    assert best[0] > best[-1]


def test_reward_values_score_each_mask_against_p_star() -> None:
    values = reward_values("huang", [90.0, 89.0], [8, 4], 16, 90.0, 2.0)
    assert values.tolist() == pytest.approx(
        [huang_reward(90.0, 90.0, 2.0, 16, 8), huang_reward(90.0, 89.0, 2.0, 16, 4)]
    )
    assert reward_values("yang", [90.0], [8], 16, 90.0, 2.0).tolist() == pytest.approx([2.0])
