"""Tests of `lightning_prune.engine.data`, the Trainer's data as the callbacks read it (through `Trainer.fit` in
the callbacks' and user-module tests; here what needs no Trainer)."""

from __future__ import annotations

import torch

from lightning_prune.engine.data import batch_count


def test_batch_count_is_what_a_sequential_read_yields() -> None:
    data = torch.utils.data.TensorDataset(torch.zeros(10, 1))
    assert batch_count(torch.utils.data.DataLoader(data, batch_size=4)) == 3

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    assert batch_count(torch.utils.data.DataLoader(Stream(), batch_size=2)) is None
