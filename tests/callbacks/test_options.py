"""Tests of `lightning_prune.callbacks.options`: each options object validates itself when it is built, before any
callback or Trainer exists, with a message naming the field."""

from __future__ import annotations

import pytest
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lightning_prune import DistributionOptions, RLOptions, ScoringOptions


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ScoringOptions, {"reward_batches": 0}, r"ScoringOptions: options.reward_batches=0 must be >= 1"),
        (ScoringOptions, {"num_samples": True}, r"options.num_samples=True must be >= 1 \(an int\)"),
        (RLOptions, {"agent_updates": 0}, r"RLOptions: options.agent_updates=0 must be >= 1"),
        (RLOptions, {"agent_lr": "0.1"}, r"RLOptions: options.agent_lr='0.1' must be a number"),
        (RLOptions, {"probe_batches": 0}, r"options.probe_batches=0 must be >= 1"),
        (DistributionOptions, {"clip": 1.0}, r"DistributionOptions: options.clip=1.0 must be in \(0, 1\)"),
        (DistributionOptions, {"criterion": "l2"}, r"options.criterion='l2' is unknown"),
    ],
)
def test_a_bad_field_fails_when_the_options_are_built(cls, kwargs, match) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        cls(**kwargs)


def test_defaults_are_valid_and_shared_fields_have_one_home() -> None:
    assert RLOptions().num_samples == DistributionOptions().num_samples == ScoringOptions().num_samples
    assert DistributionOptions().reward_batches == 2 and RLOptions().reward_batches == 4
