"""A probe's training cycle: the learning rate's half cosine to 0, and batches in an order fixed by a seed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.engine.cycle import cosine, training_batches


def test_the_learning_rate_decays_along_a_half_cosine_toward_0():
    rates = [cosine(0.1, step, 4) for step in range(4)]
    assert rates == pytest.approx([0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.1 * (1 - 2**-0.5) / 2])
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0


def test_training_batches_follow_the_seed_and_pass_over_the_data_as_often_as_needed():
    loader = DataLoader(TensorDataset(torch.arange(10)), batch_size=4)
    first = [b[0].tolist() for b in training_batches(loader, 7, seed=3)]
    assert first == [b[0].tolist() for b in training_batches(loader, 7, seed=3)]
    assert first != [b[0].tolist() for b in training_batches(loader, 7, seed=4)]
    assert len(first) == 7 and sorted(sum(first[:3], [])) == list(range(10))  # one pass: 3 batches of 10 items
