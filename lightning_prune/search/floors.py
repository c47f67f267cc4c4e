"""`min_keep` as filters: what each group keeps whatever the search decides."""

from __future__ import annotations

import math


def min_keep_count(min_keep: int | float, n: int) -> int:
    """Filters that must stay: `min_keep` as a count (int >= 1) or a fraction of `n` (float in (0, 1))."""
    # rounded first: 0.07 * 100 is 7.000000000000001 in floating point, which must still mean 7 filters
    count = math.ceil(round(min_keep * n, 9)) if isinstance(min_keep, float) else int(min_keep)
    return min(max(count, 1), n)
