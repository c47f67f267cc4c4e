"""Tests of `lightning_prune.search.floors`: `min_keep` as the filters a group keeps."""

from __future__ import annotations

import pytest

from lightning_prune.search.floors import min_keep_count


@pytest.mark.parametrize(
    ("min_keep", "n", "expected"),
    [(1, 10, 1), (4, 10, 4), (20, 10, 10), (0, 10, 1), (0.1, 64, 7), (0.5, 10, 5), (0.07, 100, 7), (1.0, 8, 8)],
)
def test_min_keep_count(min_keep: int | float, n: int, expected: int) -> None:
    assert min_keep_count(min_keep, n) == expected
