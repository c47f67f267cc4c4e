"""`benchmarks/bn_reestimation.py`: the recovered score trains a pruned copy and leaves the model alone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from lightning_prune import ImageClassifier

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bn_reestimation.py"


def _script():
    spec = importlib.util.spec_from_file_location("bn_reestimation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recovered_score_trains_a_pruned_copy() -> None:
    torch.manual_seed(0)
    module = ImageClassifier("vgg11", num_classes=10, in_channels=1, model_kwargs={"width": 0.125})
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    x, y = torch.randn(32, 1, 32, 32), torch.randint(0, 10, (32,))
    keep = torch.zeros(8, dtype=torch.bool)
    keep[:3] = True
    recovered = _script().recovered
    scores = [recovered(module, "features.0", keep, [x], [(x, y)] * steps, [(x, y)], lr=0.05) for steps in (0, 20)]
    assert scores[1] > scores[0]  # 20 steps on the scored batch fit it better than none
    assert module.model.features[0].out_channels == 8  # the model itself is neither pruned nor trained
    assert all(torch.equal(before[k], v) for k, v in module.model.state_dict().items())
