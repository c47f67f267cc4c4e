"""The level controller: how much to prune so that the final network loses at most `b`.

Filters go in one fixed order (each group's filters by its agent's learned keep probabilities, least likely
first), so the pruned network at any level is a prefix of that order, and one number chooses it: the ratio `r`
of every group's filters removed (a group never below its `min_keep`).

The drop a level costs is measured, not forecast, on few well-powered probes. A probe cuts the network to a ratio,
trains it for one cycle whose learning rate decays to 0, and reads its drop paired with the dense network on the
same held-out images (`paired_drop`). Fine-tuning shrinks the drop with the length `L` of such a cycle, toward a
floor, as `d(L) = d_inf + c / L`: the first probe also trains a cycle `SPAN` times as long from the same cut, and
its two readings give the share of a one-cycle drop left after the run's remaining training (`recovery`), which
carries every probe's one-cycle drop to the end of the run (`predicted_reading`). Through the probes' predictions
runs the curve `D(r) = A * ((1 - r) ** -alpha - 1)` (`fit_curve`): each probe is placed where the curve of the
probes so far reaches `b` (`next_ratio`), and the level chosen is the largest ratio whose predicted drop plus a
margin of half a standard error stays within `b` (`choose`), never far beyond the most pruned probe.

Pure functions of ratios, scores and counts, tested without a Trainer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The first probe's ratio, before any measurement.
FIRST_RATIO = 0.5
#: How many times longer the first probe's second cycle is than its first: the span recovery is measured over.
SPAN = 4
#: The curve's exponent before two probes can fit it.
PRIOR_ALPHA = 2.0
#: Exponents the fit may choose from (a geometric grid between these bounds).
ALPHA_BOUNDS = (0.5, 6.0)
#: The margin under `b`, in standard errors of the probes' readings.
MARGIN_SE = 0.5
#: How far beyond the most pruned probe the chosen ratio may go.
MAX_EXTRAPOLATION = 0.05
#: Probes closer than this in ratio are one probe: a repeat is nudged by this much.
MIN_SPACING = 0.02


@dataclass(frozen=True)
class Reading:
    """A drop (points) with its standard error."""

    drop: float
    se: float


def paired_drop(dense: Sequence[float], pruned: Sequence[float]) -> Reading:
    """The drop from `dense` to `pruned`, each network's score per batch of the same images: the mean of the
    per-batch differences, with their standard error (0 with a single batch)."""
    if len(dense) != len(pruned) or not dense:
        raise ValueError(f"Need one score per batch for both networks, got {len(dense)} and {len(pruned)}")
    diffs = [d - p for d, p in zip(dense, pruned, strict=True)]
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return Reading(mean, 0.0)
    var = sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)
    return Reading(mean, math.sqrt(var / len(diffs)))


def recovery(short: float, long: float, cycle: int, remaining: float) -> float:
    """The share of a one-cycle drop left after `remaining` training batches, from the drops after a cycle of
    `cycle` batches (`short`) and after one `SPAN` times as long (`long`), with `d(L) = d_inf + c / L` and
    `c >= 0`; within `[0, 1]`, and 1 where the short cycle measured no drop (nothing to carry)."""
    if not (math.isfinite(short) and math.isfinite(long)) or short <= 0:
        return 1.0
    per_cycle = max(short - long, 0.0) * SPAN / (SPAN - 1)  # c / cycle
    end = short - per_cycle * (1 - cycle / max(remaining, cycle))
    return min(max(end / short, 0.0), 1.0)


def predicted_reading(reading: Reading, share: float) -> tuple[float, float]:
    """A one-cycle `reading`'s drop and standard error after the run, `share` (`recovery`) of them left."""
    return reading.drop * share, reading.se * share


def curve(ratio: float, scale: float, alpha: float) -> float:
    """`D(r) = scale * ((1 - r) ** -alpha - 1)`: 0 at r = 0, rising without bound as r nears 1."""
    return scale * ((1 - ratio) ** -alpha - 1)


def fit_curve(ratios: Sequence[float], drops: Sequence[float], ses: Sequence[float]) -> tuple[float, float]:
    """`(scale, alpha)` of the `curve` closest to `drops` at `ratios` (least squares weighted by the inverse
    variance `1 / (se^2 + 0.1^2)`, over a grid of exponents); with one point, the exponent is `PRIOR_ALPHA`. The
    scale stays positive: more pruning never costs less."""
    if not ratios or not len(ratios) == len(drops) == len(ses):
        raise ValueError(f"Need as many ratios, drops and errors, at least one: {ratios}, {drops}, {ses}")
    low, high = ALPHA_BOUNDS
    alphas = [PRIOR_ALPHA] if len(ratios) == 1 else [low * (high / low) ** (i / 63) for i in range(64)]
    weights = [1 / (se**2 + 0.01) for se in ses]
    best = (math.inf, 0.0, PRIOR_ALPHA)
    for alpha in alphas:
        g = [curve(r, 1.0, alpha) for r in ratios]
        scale = sum(w * x * d for w, x, d in zip(weights, g, drops, strict=True)) / sum(
            w * x * x for w, x in zip(weights, g, strict=True)
        )
        scale = max(scale, 1e-3)
        error = sum(w * (scale * x - d) ** 2 for w, x, d in zip(weights, g, drops, strict=True))
        best = min(best, (error, scale, alpha))
    return best[1], best[2]


def ratio_for(scale: float, alpha: float, drop: float) -> float:
    """The ratio at which the curve reaches `drop` (0 for a drop <= 0)."""
    if drop <= 0:
        return 0.0
    return 1 - (1 + drop / scale) ** (-1 / alpha)


def max_ratio(widths: Mapping[str, int], floors: Mapping[str, int]) -> float:
    """The smallest ratio at which every group is down to its floor."""
    return max((widths[name] - floors[name]) / widths[name] for name in widths)


def _usable(probes: Sequence[Mapping], top: float) -> tuple[list[Mapping], float]:
    """The probes with a finite prediction, and `top` lowered below every probe without one."""
    failed = [p["ratio"] - MIN_SPACING for p in probes if not math.isfinite(p["predicted"])]
    return [p for p in probes if math.isfinite(p["predicted"])], max(min([top, *failed]), 0.0)


def _fitted(probes: Sequence[Mapping]) -> tuple[float, float]:
    return fit_curve([p["ratio"] for p in probes], [p["predicted"] for p in probes], [p["se"] for p in probes])


def margin(probes: Sequence[Mapping]) -> float:
    """`MARGIN_SE` times the probes' mean standard error."""
    return MARGIN_SE * sum(p["se"] for p in probes) / len(probes)


def next_ratio(probes: Sequence[Mapping], b: float, top: float) -> float:
    """Where the next probe goes: `FIRST_RATIO` first, then where the curve fitted through the probes so far
    predicts a drop of `b` less the margin, within `[MIN_SPACING, top]` and apart from every probe (below any
    probe whose drop was not finite)."""
    usable, top = _usable(probes, top)
    if not usable:
        return min(FIRST_RATIO, top) if not probes else top / 2
    ratio = min(max(ratio_for(*_fitted(usable), b - margin(usable)), MIN_SPACING), top)
    for _ in range(len(probes) + 1):
        near = [p["ratio"] for p in probes if abs(p["ratio"] - ratio) < MIN_SPACING]
        if not near:
            break
        ratio = near[0] - MIN_SPACING if near[0] + MIN_SPACING > top else near[0] + MIN_SPACING
    return ratio


def choose(probes: Sequence[Mapping], b: float, top: float) -> dict[str, float]:
    """The level: the largest ratio whose predicted drop plus the margin is within `b`, at most
    `MAX_EXTRAPOLATION` beyond the most pruned probe, with its predicted drop and the curve (ratio 0 when no
    probe's drop was finite)."""
    usable, top = _usable(probes, top)
    if not usable:
        return {"ratio": 0.0, "predicted": 0.0, "margin": 0.0, "scale": 0.0, "alpha": 0.0}
    scale, alpha = _fitted(usable)
    room = margin(usable)
    ratio = min(ratio_for(scale, alpha, b - room), top, max(p["ratio"] for p in usable) + MAX_EXTRAPOLATION)
    return {"ratio": ratio, "predicted": curve(ratio, scale, alpha), "margin": room, "scale": scale, "alpha": alpha}


def removals(orders: Mapping[str, Sequence[int]], ratio: float, floors: Mapping[str, int]) -> dict[str, list[int]]:
    """The filters each group loses at `ratio`: the first `round(ratio * width)` of its order (least likely kept
    first), keeping at least `floors[group]`; groups that lose nothing are left out."""
    cuts = {}
    for name, order in orders.items():
        count = min(round(ratio * len(order)), len(order) - floors[name])
        if count > 0:
            cuts[name] = sorted(order[:count])
    return cuts
