"""Tests of `lightning_prune.callbacks.session.Session`, a pruning step's services (the rest is exercised through
`Trainer.fit` in the callbacks' tests)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from lightning_prune import DistributionPruneCallback
from lightning_prune.callbacks.session import Session


def test_shared_scores_return_non_finite_scores_as_minus_infinity_naming_the_layer() -> None:
    trainer = SimpleNamespace(global_rank=0, world_size=1, precision_plugin=SimpleNamespace(forward_context=None))
    run = Session(DistributionPruneCallback(), trainer, SimpleNamespace(device="cpu"))
    values = [1.0, math.nan, math.inf]
    with pytest.warns(UserWarning, match="2 of 3 candidates of features.4 .* not finite"):
        scores = run.shared(values.__getitem__, 3, "features.4")
    assert scores == [1.0, -math.inf, -math.inf]
