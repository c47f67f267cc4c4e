"""Tests of `lightning_prune.callbacks.history`: one record schema for both callbacks, and the states saved before
it read into it."""

from __future__ import annotations

from lightning_prune.callbacks.history import cut_records, upgrade

COST = {"params": 10, "macs": 100}


def test_a_step_records_the_groups_it_cut() -> None:
    records = cut_records(1, 3, {"a": 8, "b": 4}, {"a": 6, "b": 4}, COST)
    assert records == [{"step": 1, "epoch": 3, "name": "a", "before": 8, "after": 6, **COST}]


def test_an_earlier_rl_state_reads_as_cut_records() -> None:
    old = {
        "groups": ["a", "b"],
        "widths": {"a": 8, "b": 4},
        "level": {"epoch": 2},
        "history": [
            {"index": 0, "name": "a", "before": 8, "after": 5, **COST},
            {"index": 1, "name": "b", "before": 4, "after": 4, **COST},
        ],
    }
    assert upgrade(old)["history"] == [{"step": 0, "epoch": 2, "name": "a", "before": 8, "after": 5, **COST}]


def test_an_earlier_distribution_state_reads_as_cut_records_and_steps() -> None:
    steps = [
        {"step": 0, "epoch": 0, "removed": {"a": 2}, "q": 1.0, **COST},
        {"step": 1, "epoch": 1, "removed": {"a": 1, "b": 1}, "q": 2.0, "params": 8, "macs": 80},
    ]
    new = upgrade({"groups": ["a", "b"], "sizes": [8, 4], "history": steps})
    assert new["steps"] == steps and new["widths"] == {"a": 8, "b": 4}
    assert [(r["step"], r["name"], r["before"], r["after"]) for r in new["history"]] == [
        (0, "a", 8, 6),
        (1, "a", 6, 5),
        (1, "b", 4, 3),
    ]
    assert upgrade(new) == new  # a state in the schema is left as it is
