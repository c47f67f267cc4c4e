"""Tests of `lightning_prune.engine.metric`: the default top-1 score for classification and dense outputs, torchmetrics
metrics and callables in points, and batch unpacking."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lightning_prune.engine.metric import CallableScore, MetricScore, TopOne, calibrate, make_score, unpack_pair


def test_top_one_is_accuracy_for_logits_and_pixel_accuracy_for_maps():
    score = TopOne()
    score.update(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert score.compute() == pytest.approx(200 / 3)
    dense = TopOne(ignore_index=255)
    preds = torch.zeros(1, 3, 2, 2)
    preds[0, 2] = 1.0  # class 2 everywhere
    dense.update(preds, torch.tensor([[[2, 2], [0, 255]]]))
    assert dense.compute() == pytest.approx(200 / 3)  # the ignored pixel is not counted


def test_top_one_names_the_shapes_it_cannot_compare():
    with pytest.raises(ValueError, match=r"outputs of shape \[2, 3\] do not match targets of shape \[2, 4\]"):
        TopOne().update(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long))


def test_torchmetrics_metric_bounded_by_one_counts_in_points_and_is_copied():
    miou = MulticlassJaccardIndex(num_classes=2)
    score = make_score(miou)
    assert isinstance(score, MetricScore) and score.metric is not miou
    preds = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2): class 0 then class 1
    score.update(preds, torch.tensor([[[0, 1]]]))
    assert score.compute() == pytest.approx(100.0)


def test_a_callable_in_fractions_is_switched_to_points_on_its_first_value():
    score = make_score(lambda preds, target: (preds.argmax(1) == target).float().mean())
    assert isinstance(score, CallableScore)
    assert calibrate(score, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1])) == pytest.approx(50.0)
    score.reset()
    score.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    score.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert score.compute() == pytest.approx(100 * (1 + 2) / 4)  # weighted by batch size


def test_calibrate_reports_a_metric_that_does_not_fit_the_outputs():
    with pytest.raises(ValueError, match=r"cannot be computed from the model's outputs \(tensor \[2, 3\], float32\)"):
        calibrate(make_score(MulticlassJaccardIndex(num_classes=2)), torch.zeros(2, 3), torch.zeros(2, 5))


def test_unpack_pair_takes_pairs_and_names_anything_else():
    assert unpack_pair((1, 2)) == (1, 2)
    with pytest.raises(TypeError, match="a dict, not an"):
        unpack_pair({"image": 1})
    with pytest.raises(TypeError, match="a list of 3 items"):
        unpack_pair([1, 2, 3])
