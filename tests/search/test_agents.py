"""Tests of `lightning_prune.search.agents`: features, the agent, mask sampling, the REINFORCE update and resuming."""

from __future__ import annotations

import pytest
import torch

from lightning_prune.search.agents import (
    LayerAgent,
    LayerSearch,
    entropy,
    filter_features,
    l1_prior,
    log_prob,
    reinforce_loss,
    sample_masks,
)


def test_filter_features_standardised_rows_per_filter() -> None:
    weight = torch.randn(12, 3, 3, 3, dtype=torch.float64) * 5 + 2
    features = filter_features(weight)
    assert features.shape == (12, 27) and features.dtype == torch.float32 and features.device.type == "cpu"
    assert features.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert features.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    assert not features.requires_grad
    assert torch.all(torch.isfinite(filter_features(torch.ones(1, 1, 1, 1))))  # a constant layer: no NaN


@pytest.mark.parametrize("init_keep", [0.5, 0.9, 0.99])
def test_agent_starts_at_init_keep(init_keep: float) -> None:
    agent = LayerAgent(27, init_keep=init_keep)
    probs = agent(filter_features(torch.randn(10, 3, 3, 3)))
    assert probs.shape == (10,)
    torch.testing.assert_close(probs, torch.full((10,), init_keep))


def test_l1_prior_is_the_scaled_standardised_l1_norm() -> None:
    weight = torch.stack([torch.full((2, 3, 3), v) for v in (1.0, 2.0, 3.0)])  # L1 norms 18, 36, 54
    torch.testing.assert_close(l1_prior(weight, 2.0), 2.0 * torch.tensor([-1.0, 0.0, 1.0]) / (2 / 3) ** 0.5)
    torch.testing.assert_close(l1_prior(torch.ones(4, 2, 3, 3), 5.0), torch.zeros(4))  # equal norms: no offset
    torch.testing.assert_close(l1_prior(weight, 0.0), torch.zeros(3))


def test_prior_ranks_filters_by_l1_norm_before_any_update() -> None:
    weight = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    norms = weight.abs().sum((1, 2, 3))
    search = LayerSearch(weight, min_keep=1, seed=0, init_keep=0.8, prior_scale=1.0)
    probs = search.probs()
    assert torch.equal(probs.argsort(), norms.argsort())
    plain = LayerSearch(weight, min_keep=1, seed=0, init_keep=0.8).probs()
    torch.testing.assert_close(plain, torch.full((8,), 0.8))


def test_agent_learns_to_depart_from_the_prior() -> None:
    """Rewards that favour removing the highest-norm filters overturn the L1 ranking."""
    weight = torch.randn(12, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    useless = torch.zeros(12, dtype=torch.bool)
    useless[weight.abs().sum((1, 2, 3)).argsort()[-4:]] = True
    search = LayerSearch(weight, 1, seed=0, lr=0.1, init_keep=0.8, prior_scale=1.0)
    assert (search.probs()[useless] >= 0.5).all()  # the prior keeps them at first
    for _ in range(60):
        masks = search.sample(16)
        removed = ~masks
        search.update(masks, (removed & useless).sum(1).float() - 2.0 * (removed & ~useless).sum(1).float())
    assert torch.equal(search.probs() >= 0.5, ~useless)


def test_sample_masks_respect_min_keep_for_any_seed() -> None:
    probs = torch.linspace(0.01, 0.6, 20)  # most draws keep only a few filters
    for seed in range(200):
        min_keep = seed % 7 + 1
        masks = sample_masks(probs, 16, torch.Generator().manual_seed(seed), min_keep)
        assert masks.shape == (16, 20) and masks.dtype == torch.bool
        assert (masks.sum(1) >= min_keep).all()
        raw = torch.rand(16, 20, generator=torch.Generator().manual_seed(seed)) < probs
        assert (masks >= raw).all()  # filters are only ever added
        short = raw.sum(1) < min_keep  # rows that were topped up keep the most likely filters as well
        assert masks[short][:, -min_keep:].all()
        assert torch.equal(masks[~short], raw[~short])
    never = sample_masks(torch.zeros(5), 3, torch.Generator().manual_seed(0), 2)
    assert (never.sum(1) == 2).all()


def test_sample_masks_follow_probs_and_seed() -> None:
    probs = torch.tensor([0.0, 1.0, 0.5, 0.5])
    a = sample_masks(probs, 500, torch.Generator().manual_seed(7), 0)
    b = sample_masks(probs, 500, torch.Generator().manual_seed(7), 0)
    c = sample_masks(probs, 500, torch.Generator().manual_seed(8), 0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a[:, 0].any() and a[:, 1].all()
    assert 0.4 < a[:, 2:].float().mean() < 0.6


def test_log_prob_and_entropy() -> None:
    probs = torch.tensor([0.9, 0.2])
    masks = torch.tensor([[True, False], [False, True]])
    expected = torch.tensor([0.9 * 0.8, 0.1 * 0.2]).log()
    torch.testing.assert_close(log_prob(probs, masks), expected)
    assert entropy(torch.full((3,), 0.5)).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert torch.isfinite(log_prob(torch.tensor([0.0, 1.0]), torch.tensor([True, False])))


def test_reinforce_gradient_favours_high_reward_samples() -> None:
    logits = torch.zeros(3, requires_grad=True)
    masks = torch.tensor([[True, False, True], [False, False, True]])
    reinforce_loss(torch.sigmoid(logits), masks, torch.tensor([1.0, 0.0])).backward()
    # the rewarded sample kept filter 0: descending the loss raises its keep probability; filter 1 (removed in
    # both) and filter 2 (kept in both) get no signal from a mean baseline
    assert logits.grad[0] < 0
    torch.testing.assert_close(logits.grad[1:], torch.zeros(2))
    logits.grad = None
    reinforce_loss(torch.sigmoid(logits), masks, torch.tensor([2.0, 2.0])).backward()
    torch.testing.assert_close(logits.grad, torch.zeros(3))  # equal rewards: zero advantage


def test_bandit_learns_which_filters_to_remove() -> None:
    n, useless = 16, torch.arange(16) < 6
    search = LayerSearch(torch.randn(n, 4, 3, 3, generator=torch.Generator().manual_seed(0)), 1, seed=0, lr=0.05)
    for _ in range(50):
        masks = search.sample(16)
        removed = ~masks
        rewards = (removed & useless).sum(1).float() - 2.0 * (removed & ~useless).sum(1).float()
        search.update(masks, rewards)
    probs = search.probs()
    assert (probs[useless] < 0.5).all(), probs
    assert (probs[~useless] > 0.5).all(), probs
    assert torch.equal(search.probs() >= 0.5, ~useless)
    assert search.updates == 50


def _search(seed: int = 3) -> LayerSearch:
    weight = torch.randn(10, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    return LayerSearch(weight, min_keep=2, seed=seed, lr=0.1, entropy_coef=0.01)


def _run(search: LayerSearch, steps: int) -> list[torch.Tensor]:
    out = []
    for _ in range(steps):
        masks = search.sample(6)
        search.update(masks, masks[:, :5].sum(1).float() - masks[:, 5:].sum(1).float())
        out += [masks, search.probs()]
    return out


def test_layer_search_is_deterministic_per_seed() -> None:
    a, b, c = _run(_search(), 3), _run(_search(), 3), _run(_search(seed=4), 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_layer_search_resume_continues_identically(tmp_path) -> None:
    search = _search()
    _run(search, 3)
    torch.save(search.state_dict(), tmp_path / "search.pt")
    expected = _run(search, 4)  # continuing must not alter the saved snapshot
    resumed = _search(seed=99)  # a different seed: everything comes from the state
    resumed.load_state_dict(torch.load(tmp_path / "search.pt", weights_only=True))
    assert resumed.updates == 3
    got = _run(resumed, 4)
    assert all(torch.equal(x, y) for x, y in zip(expected, got, strict=True))


def test_layer_search_works_inside_inference_mode() -> None:
    with torch.inference_mode():  # Lightning's validation hooks
        search = _search()
        before = search.probs()
        _run(search, 2)
        assert not torch.equal(before, search.probs())
