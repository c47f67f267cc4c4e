"""Tests of `benchmarks/agent_noise.py`: an agent's drift under rewards without signal."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_benchmark


@pytest.fixture(scope="module")
def agent_noise():
    return load_benchmark("agent_noise")


def test_fast_agents_saturate_on_noise_and_slow_ones_keep_the_prior(agent_noise, capsys) -> None:
    agent_noise.main(["--agent-lr", "0.0001", "0.3", "--l1-prior", "0", "2", "--seeds", "1", "--updates", "10"])
    out = json.loads(capsys.readouterr().out)
    rows = {(r["agent_lr"], r["l1_prior"]): r for r in out["rows"]}
    assert out["updates"] == 10 and len(rows) == 4
    slow, fast = rows[(0.0001, 2.0)], rows[(0.3, 0.0)]
    assert slow["l1_rank_corr"] > 0.99 and slow["logit_shift_std"] < 0.05  # the L1 ranking, left in place
    assert rows[(0.0001, 0.0)]["l1_rank_corr"] == pytest.approx(0.0, abs=0.3)  # no prior: no relation to L1
    assert fast["saturated"] > 0.5 and fast["logit_shift_std"] > 5 * slow["logit_shift_std"]


def test_rank_corr(agent_noise) -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert agent_noise.rank_corr(a, a * 10) == pytest.approx(1.0)
    assert agent_noise.rank_corr(a, -a) == pytest.approx(-1.0)
    assert agent_noise.rank_corr(a, torch.ones(4)) == 0.0
