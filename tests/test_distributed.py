"""Pruning under 2-process DDP on CPU (gloo): both ranks cut the same channels mid-fit and stay identical, the
decisions equal those of one process, and `ddp_spawn` hands the pruned weights back to the main process.

DDP launches its processes by re-running the script, so each run is `tests/helpers.py` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LAYERS, distributed_run, param_checksum, steps

HELPERS = Path(__file__).with_name("helpers.py")


def _launch(root: Path, strategy: str) -> tuple[list[dict], dict]:
    """Run `distributed_run` on 2 CPU processes; the per-rank results and the main process's."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HELPERS.parents[1]), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(HELPERS), strategy, str(root)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((root / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return ranks, json.loads((root / "main.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same run on one process (on one thread, like each DDP rank)."""
    module, _ = distributed_run(tmp_path_factory.mktemp("single"), "auto", devices=1)
    return {"steps": steps(module), "checksum": param_checksum(module)}


def test_ddp_ranks_prune_alike_and_decide_like_one_process(tmp_path, one_process):
    ranks, main = _launch(tmp_path, "ddp")
    assert [s[0] for s in ranks[0]["steps"]] == LAYERS["vgg11"]
    assert ranks[0] == ranks[1] == main
    assert ranks[0]["steps"] == one_process["steps"]
    assert ranks[0]["checksum"] == pytest.approx(one_process["checksum"], rel=1e-6)


def test_ddp_spawn_main_process_reloads_the_pruned_model(tmp_path):
    ranks, main = _launch(tmp_path, "ddp_spawn")
    assert [s[0] for s in ranks[0]["steps"]] == LAYERS["vgg11"]
    assert ranks[0] == ranks[1]
    assert main["steps"] == ranks[0]["steps"]
    assert main["checksum"] == pytest.approx(ranks[0]["checksum"], rel=1e-9)
