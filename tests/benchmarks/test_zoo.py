"""benchmarks/zoo.py on one small model: a JSON line with groups, MACs removed, output shape and reload check."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load_benchmark


def test_zoo_squeezenet_line(tmp_path: Path) -> None:
    zoo = load_benchmark("zoo")
    out = tmp_path / "zoo.jsonl"
    assert zoo.main(["--models", "squeezenet1_0", "--output", str(out)]) == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["crash"] is None and record["groups_pruned"] == 25
    assert "classifier.1" in record["skipped"]  # the output layer keeps its classes
    assert record["macs_removed"] > 0 and record["output_shape_ok"] and record["reload_identical"]
