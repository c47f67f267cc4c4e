"""The level controller: paired drops, the training-length prediction, the curve, where probes go, the level
chosen and the cuts at a level; pure functions, no Trainer."""

from __future__ import annotations

import math

import pytest

from lightning_prune.search import level


def _probe(ratio: float, predicted: float, se: float = 0.1) -> dict:
    return {"ratio": ratio, "predicted": predicted, "se": se}


def test_paired_drop_is_the_mean_difference_with_its_standard_error():
    reading = level.paired_drop([90.0, 92.0, 94.0, 96.0], [89.0, 90.0, 94.0, 93.0])
    assert reading.drop == pytest.approx(1.5)
    diffs = [1.0, 2.0, 0.0, 3.0]
    sd = math.sqrt(sum((d - 1.5) ** 2 for d in diffs) / 3)
    assert reading.se == pytest.approx(sd / 2)
    assert level.paired_drop([90.0], [88.5]) == level.Reading(1.5, 0.0)
    with pytest.raises(ValueError, match="one score per batch"):
        level.paired_drop([90.0, 91.0], [90.0])


def test_recovery_is_the_share_of_a_one_cycle_drop_left_after_the_run():
    # d(L) = 1 + 300 / L through d(100) = 4 and d(400) = 1.75: after 1,600 batches d = 1.1875
    assert level.SPAN == 4
    assert level.recovery(4.0, 1.75, 100, 1600) == pytest.approx(1.1875 / 4)
    assert level.recovery(4.0, 1.75, 100, math.inf) == pytest.approx(0.25)  # the floor alone
    assert level.recovery(4.0, 1.75, 100, 100) == 1.0  # no more training than the cycle had
    assert level.recovery(2.0, 2.5, 100, 1600) == 1.0  # a longer cycle that did not help: nothing recovered
    assert level.recovery(4.0, -2.0, 100, math.inf) == 0.0  # never below nothing left
    assert level.recovery(-0.3, -0.5, 100, 1600) == 1.0 and level.recovery(math.nan, 1.0, 100, 1600) == 1.0
    assert level.predicted_reading(level.Reading(2.0, 0.4), 0.5) == pytest.approx((1.0, 0.2))


def test_fit_curve_recovers_the_curve_through_exact_points():
    ratios = [0.2, 0.4, 0.6]
    drops = [level.curve(r, 0.3, 1.7) for r in ratios]
    scale, alpha = level.fit_curve(ratios, drops, [0.0] * 3)
    assert alpha == pytest.approx(1.7, rel=0.05) and scale == pytest.approx(0.3, rel=0.1)
    scale, alpha = level.fit_curve([0.5], [0.9], [0.2])
    assert alpha == level.PRIOR_ALPHA and level.curve(0.5, scale, alpha) == pytest.approx(0.9)
    scale, _ = level.fit_curve([0.3, 0.5], [-0.2, -0.1], [0.1, 0.1])  # gains only: the scale stays positive
    assert scale > 0


def test_ratio_for_inverts_the_curve():
    assert level.curve(level.ratio_for(0.4, 2.0, 1.3), 0.4, 2.0) == pytest.approx(1.3)
    assert level.ratio_for(0.4, 2.0, 0.0) == 0.0 and level.ratio_for(0.4, 2.0, -1.0) == 0.0


def test_probes_start_at_the_first_ratio_then_go_where_the_curve_reaches_b():
    assert level.next_ratio([], 1.0, 0.9) == level.FIRST_RATIO
    assert level.next_ratio([], 1.0, 0.3) == 0.3
    first = [_probe(0.5, 3.0)]
    scale, alpha = level.fit_curve([0.5], [3.0], [0.1])
    expected = level.ratio_for(scale, alpha, 1.0 - level.margin(first))
    assert level.next_ratio(first, 1.0, 0.9) == pytest.approx(expected) and expected < 0.5
    assert level.next_ratio([_probe(0.5, 0.01)], 1.0, 0.9) == 0.9  # a cheap level: up to the top
    assert level.next_ratio([_probe(0.9, 0.01)], 1.0, 0.9) == pytest.approx(0.88)  # never a repeat


def test_the_level_is_the_largest_ratio_within_b_less_the_margin():
    probes = [_probe(r, level.curve(r, 0.3, 2.0), 0.2) for r in (0.3, 0.5, 0.6)]
    chosen = level.choose(probes, 1.0, 0.9)
    assert chosen["margin"] == pytest.approx(level.MARGIN_SE * 0.2)
    assert chosen["predicted"] == pytest.approx(1.0 - chosen["margin"], abs=0.02)
    assert chosen["ratio"] <= 0.6 + level.MAX_EXTRAPOLATION
    ratios = [level.choose(probes, b, 0.9)["ratio"] for b in (0.5, 1.0, 2.0, 8.0)]
    assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.6 + level.MAX_EXTRAPOLATION)
    assert level.choose(probes, 8.0, 0.62)["ratio"] == 0.62  # never beyond every group's floor


def test_probes_without_a_finite_drop_are_refused_with_every_level_beyond_them():
    probes = [_probe(0.5, math.inf), _probe(0.3, 0.4)]
    assert level.choose(probes, 5.0, 0.9)["ratio"] <= 0.5 - level.MIN_SPACING
    assert level.next_ratio([_probe(0.5, math.inf)], 1.0, 0.9) == pytest.approx((0.5 - level.MIN_SPACING) / 2)
    assert level.choose([_probe(0.5, math.nan)], 1.0, 0.9)["ratio"] == 0.0


def test_removals_take_each_order_s_first_filters_down_to_the_floor():
    orders = {"a": [3, 1, 0, 2], "b": [5, 4, 3, 2, 1, 0, 7, 6]}
    assert level.removals(orders, 0.5, {"a": 1, "b": 1}) == {"a": [1, 3], "b": [2, 3, 4, 5]}
    assert level.removals(orders, 1.0, {"a": 3, "b": 2}) == {"a": [3], "b": [0, 1, 2, 3, 4, 5]}
    assert level.removals(orders, 0.1, {"a": 1, "b": 1}) == {"b": [5]}
    assert level.max_ratio({"a": 4, "b": 8}, {"a": 3, "b": 2}) == 0.75
