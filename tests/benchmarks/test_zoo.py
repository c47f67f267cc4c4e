"""benchmarks/zoo.py on small models: a JSON line with groups, MACs removed, output shape and reload check, through
the surgery and through `RLPruneCallback` in a real fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import load_benchmark


def test_zoo_squeezenet_line(tmp_path: Path) -> None:
    zoo = load_benchmark("zoo")
    out = tmp_path / "zoo.jsonl"
    assert zoo.main(["--models", "squeezenet1_0", "--output", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["crash"] is None and record["groups_pruned"] == 25
    assert "classifier.1" in record["skipped"]  # the output layer keeps its classes
    assert record["macs_removed"] > 0 and record["output_shape_ok"] and record["reload_identical"]


def test_zoo_callback_line(tmp_path: Path) -> None:
    zoo = load_benchmark("zoo")
    record = zoo.run_callback("squeezenet1_0", size=32, root=tmp_path)
    assert record["crash"] is None, record.get("traceback")
    assert record["groups_pruned"] == record["groups_searched"] == 25 and record["level"] == 0.5
    assert record["macs_removed"] > 0 and record["output_shape_ok"]
    assert not record["non_finite"] and record["reload_identical"] and not record["timeout"]
    rows = zoo.callback_table([record, {"model": "x", "input": 64, "timeout": True, "crash": None, "seconds": 600}])
    assert "| squeezenet1_0 | 32 | 25 / 25 |" in rows and "| x | 64 | timeout |" in rows


def test_zoo_timm_mode_without_timm_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    zoo = load_benchmark("zoo")
    monkeypatch.setattr(zoo, "_timm_available", lambda: False)
    assert zoo.main(["--callback", "--timm"]) == 2
    assert "pip install" in capsys.readouterr().out
