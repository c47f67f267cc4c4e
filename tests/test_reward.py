"""Tests of `lightning_prune.reward` against hand-computed values."""

from __future__ import annotations

import math

import pytest

from lightning_prune.reward import REWARDS, accuracy_term, budget_at, fewest_within, huang_reward, yang_reward


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


def test_budget_schedules() -> None:
    assert [budget_at(2.0, i, 4) for i in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert [budget_at(2.0, i, 4, "shared") for i in range(4)] == [2.0] * 4
    assert budget_at(3.0, 0, 1) == 3.0  # a single layer gets all of b
    assert [budget_at(2.0, i, 3, "macs", [1, 3, 0]) for i in range(3)] == [0.5, 2.0, 2.0]  # in proportion to MACs


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.0, 4, 4), "index=4, count=4"),
        ((1.0, 0, 2, "cubic"), "'cubic'"),
        ((1.0, 0, 2, "macs"), "needs 2 weights"),
        ((1.0, 0, 2, "macs", [1.0]), "needs 2 weights"),
        ((1.0, 0, 2, "macs", [0.0, 0.0]), "positive sum"),
    ],
)
def test_bad_budget_arguments(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        budget_at(*args)


def test_fewest_within_keeps_the_fewest_filters_the_budget_allows() -> None:
    drops, kept = [0.0, 0.3, 0.9, 0.3, 2.5], [16, 12, 8, 12, 4]
    assert fewest_within(drops, kept, 1.0) == 2  # 8 filters at a drop of 0.9
    assert fewest_within(drops, kept, 0.5) == 1  # 12 filters, the first of the two equal drops
    assert fewest_within([0.0, 0.4, 0.2], [16, 12, 12], 0.5) == 2  # equal counts: the smaller drop
    assert fewest_within([0.6, 0.9], [16, 8], 0.5) is None  # nothing within the budget


def test_fewest_within_needs_one_drop_per_candidate() -> None:
    with pytest.raises(ValueError, match="one drop per candidate"):
        fewest_within([0.1], [16, 8], 1.0)
