"""The pruning history of both callbacks, in one schema: a record for each group a step cut.

A record is `{"step", "epoch", "name", "before", "after", "params", "macs"}`: the step's index (0 for
`RLPruneCallback`'s one cut), the epoch it was taken at, the group, its filters before and after the step, and the
whole network's params and MACs after it. Checkpoints saved before this schema are read through `upgrade`.
"""

from __future__ import annotations

from typing import Any


def cut_records(
    step: int, epoch: int, before: dict[str, int], after: dict[str, int], cost: dict[str, int]
) -> list[dict[str, Any]]:
    """The records of one step: the groups whose width fell from `before` to `after`."""
    return [
        {"step": step, "epoch": epoch, "name": name, "before": width, "after": after[name], **cost}
        for name, width in before.items()
        if after[name] < width
    ]


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A callback state in this schema. Earlier states held `RLPruneCallback` records of every group (with an
    `index`) or `DistributionPruneCallback` step records (with `removed` counts) and its unpruned widths as `sizes`;
    the step records move to `steps`."""
    history = state.get("history") or []
    widths = state.get("widths") or dict(zip(state.get("groups") or [], state.get("sizes") or [], strict=True))
    if not any("index" in r or "removed" in r for r in history):
        return {**state, "widths": widths}
    if any("removed" in r for r in history):
        return {**state, "widths": widths, "steps": history, "history": _from_steps(history, widths)}
    epoch = (state.get("level") or {}).get("epoch", 0)
    cost = {k: history[0][k] for k in ("params", "macs") if k in history[0]}
    after = {r["name"]: r["after"] for r in history}
    return {**state, "widths": widths, "history": cut_records(0, epoch, widths, after, cost)}


def _from_steps(steps: list[dict[str, Any]], widths: dict[str, int]) -> list[dict[str, Any]]:
    """Cut records from step records that counted the filters each group lost."""
    now, records = dict(widths), []
    for step in steps:
        before = {name: now[name] for name in step["removed"]}
        now.update({name: now[name] - count for name, count in step["removed"].items()})
        cost = {"params": step["params"], "macs": step["macs"]}
        records += cut_records(step["step"], step["epoch"], before, now, cost)
    return records
