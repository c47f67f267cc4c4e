"""Tests of `lightning_prune.search.distribution`: the distribution search, criteria, cost model and multi-group
scorer."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_prune.engine import surgery
from lightning_prune.engine.batchnorm import reestimate_batchnorm
from lightning_prune.engine.cost import CostModel, model_cost
from lightning_prune.engine.importance import filter_scores, group_importance
from lightning_prune.engine.scoring import GroupScorer
from lightning_prune.search.distribution import (
    DistributionSearch,
    Elite,
    EliteBuffer,
    allocate,
    allocate_for,
    clipped_step,
    initial_distribution,
    keep_mask,
    q_score,
    removed_filters,
    sample_distributions,
)
from lightning_prune.zoo.models import build_model

SHAPE = [1, 1, 32, 32]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch) -> None:
    """Trainers without a logger write into the working directory (pruning_summary.json): keep it temporary."""
    monkeypatch.chdir(tmp_path)


def _model(name: str, seed: int = 0) -> nn.Module:
    """A width-0.25 model with randomised BatchNorm statistics (a mask before BN would change the output)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10, in_channels=1, width=0.25)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.5, 0.5)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0)  # diverse predictions: a changed logit shows in the accuracy
    return model.eval()


def _groups(model: nn.Module):
    inputs = surgery.example_input(model, SHAPE)
    graph = surgery.build_graph(model, inputs)
    return inputs, graph, surgery.channel_groups(model, graph, inputs)


# -- the distribution ---------------------------------------------------------------------------------------


def test_initial_distribution_is_proportional_to_widths() -> None:
    probs = initial_distribution([4, 8, 16, 4])
    assert torch.allclose(probs, torch.tensor([0.125, 0.25, 0.5, 0.125], dtype=torch.float64))


def test_samples_are_distributions_reproducible_and_explore_with_epsilon() -> None:
    probs = initial_distribution([4, 8, 16, 4])
    draws = [sample_distributions(probs, 6, 0.3, 0.5, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    assert draws[0].shape == (6, 4) and (draws[0] > 0).all()
    assert torch.allclose(draws[0].sum(1), torch.ones(6, dtype=torch.float64))
    quiet = sample_distributions(probs, 5, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(quiet, probs.expand(5, -1))
    wild = sample_distributions(probs, 5, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert not torch.allclose(wild, probs.expand(5, -1), atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_allocate_hits_the_total_within_capacity_proportionally(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    capacity = torch.randint(0, 12, (9,), generator=gen)
    probs = torch.rand(9, generator=gen, dtype=torch.float64)
    probs /= probs.sum()
    for total in (1, 7, int(capacity.sum()) // 2, int(capacity.sum()), int(capacity.sum()) + 5):
        counts = allocate(probs, total, capacity)
        assert int(counts.sum()) == min(total, int(capacity.sum()))
        assert (counts >= 0).all() and (counts <= capacity).all()
    uncapped = allocate(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), 10, torch.tensor([9, 9, 9]))
    assert uncapped.tolist() == [5, 3, 2]
    capped = allocate(torch.tensor([0.8, 0.1, 0.1], dtype=torch.float64), 10, torch.tensor([2, 9, 9]))
    assert capped.tolist() == [2, 4, 4]  # the capped group's excess is shared by the others


def test_allocate_for_takes_the_fewest_channels_that_reach_the_goal() -> None:
    probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    capacity = torch.tensor([10, 10])
    cost_per_channel = torch.tensor([3.0, 1.0], dtype=torch.float64)

    def saving(counts: torch.Tensor) -> float:
        return float(counts.double() @ cost_per_channel)

    counts = allocate_for(probs, capacity, saving, goal=20.0)
    assert saving(counts) >= 20.0 and saving(allocate(probs, int(counts.sum()) - 1, capacity)) < 20.0
    assert allocate_for(probs, capacity, saving, goal=1e9).tolist() == [10, 10]


def test_q_score_adds_weighted_reductions_in_points() -> None:
    assert q_score(90.0, 0.5, 0.25, alpha=0.2, beta=0.4) == pytest.approx(90.0 + 10.0 + 10.0)
    assert q_score(90.0, 0.5, 0.25, alpha=0.0, beta=0.0) == 90.0


def test_clipped_step_moves_toward_the_target_within_the_clip() -> None:
    probs = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    target = torch.tensor([0.9, 0.05, 0.05], dtype=torch.float64)
    moved = clipped_step(probs, target, lr=1.0, clip=0.2)
    assert moved.sum().item() == pytest.approx(1.0)
    assert moved[0] > probs[0] and moved[1] < probs[1] and moved[2] < probs[2]
    ratio = moved / probs
    assert ratio.max() / ratio.min() <= 1.2 / 0.8 + 1e-9
    assert torch.allclose(clipped_step(probs, target, lr=0.1, clip=0.9), 0.9 * probs + 0.1 * target)


def test_elite_buffer_keeps_the_best_samples() -> None:
    buffer = EliteBuffer(2)
    for q, p in [(1.0, [1.0, 0.0]), (3.0, [0.0, 1.0]), (2.0, [0.5, 0.5]), (3.0, [0.2, 0.8])]:
        buffer.push(Elite(q, torch.tensor(p), torch.zeros(2)))
    assert [e.q for e in buffer.items] == [3.0, 3.0]
    assert buffer.best().probs.tolist() == [0.0, 1.0]  # the earlier of two equal Q
    assert torch.allclose(buffer.mean(), torch.tensor([0.1, 0.9]))


def _synthetic_search(seed: int) -> DistributionSearch:
    return DistributionSearch([8, 8, 8], seed, num_samples=6, updates=3, elite_size=3, noise=0.5, epsilon=0.3)


def _penalise_group_one(counts: torch.Tensor) -> list[dict[str, float]]:
    return [{"q": -float(c[1]) + 0.1 * float(c[0])} for c in counts]


def test_search_learns_is_reproducible_and_resumes() -> None:
    capacity = torch.tensor([7, 7, 7])

    def counts_of(probs: torch.Tensor) -> torch.Tensor:
        return allocate(probs, 9, capacity)

    runs = []
    for _ in range(2):
        search = _synthetic_search(seed=4)
        bests = [search.search(counts_of, _penalise_group_one) for _ in range(3)]
        runs.append((search.probs.clone(), [b.counts.tolist() for b in bests]))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    probs = runs[0][0]
    assert probs[1] < 1 / 3 and probs[0] > probs[2]  # the penalised group gives up less, the rewarded one more
    assert runs[0][1][-1][1] <= 1
    search = _synthetic_search(seed=4)
    search.search(counts_of, _penalise_group_one)
    resumed = _synthetic_search(seed=99)
    resumed.load_state_dict(copy.deepcopy(search.state_dict()))
    assert resumed.epsilon == pytest.approx(0.3 * 0.9**3)
    a, b = search.search(counts_of, _penalise_group_one), resumed.search(counts_of, _penalise_group_one)
    assert torch.equal(a.counts, b.counts) and torch.equal(search.probs, resumed.probs)


# -- criteria, costs and scoring on real models ------------------------------------------------------------


def test_filter_scores_l1_and_taylor() -> None:
    model = _model("inception_small")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][:3]
    l1 = filter_scores(model, convs, "l1")
    assert torch.allclose(l1[convs[0]], convs[0].weight.detach().abs().sum((1, 2, 3)))
    convs[1].weight.requires_grad_(False)
    model.train()
    batches = [(torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,)))]
    taylor = filter_scores(model, convs, "taylor", batches)
    assert all(taylor[c].shape == (c.out_channels,) and (taylor[c] >= 0).all() for c in convs)
    assert taylor[convs[0]].sum() > 0 and taylor[convs[1]].sum() > 0
    assert all(c.weight.grad is None for c in convs) and not convs[1].weight.requires_grad
    assert model.training
    with pytest.raises(ValueError, match="criterion='snip' is unknown"):
        filter_scores(model, convs, "snip")


def test_group_importance_sums_the_coupled_convolutions_and_picks_the_weakest() -> None:
    model = _model("resnet56")
    _, graph, groups = _groups(model)
    residual = groups[0]
    assert residual.name == "conv1" and len(residual.members) == 10
    maps = {residual.name: surgery.output_channel_maps(model, graph, residual.name)}
    convs = [model.get_submodule(n) for n in residual.members]
    scores = filter_scores(model, convs, "l1")
    importance = group_importance(maps, scores)["conv1"]
    assert torch.allclose(importance, sum(scores[c] for c in convs))  # identity-coupled: same channel order
    removed = removed_filters(importance, 2)
    assert removed == sorted(torch.argsort(importance)[:2].tolist())
    assert keep_mask(4, removed).sum() == 2


@pytest.mark.parametrize("name", ["resnet56", "inception_small"])
def test_a_sample_scores_and_costs_what_physical_pruning_gives(name: str) -> None:
    """GroupScorer's accuracy and CostModel's params/MACs for a sample touching many groups at once."""
    model = _model(name)
    inputs, graph, groups = _groups(model)
    gen = torch.Generator().manual_seed(1)
    counts = allocate(initial_distribution([g.size for g in groups]), sum(g.size for g in groups) // 2,
                      torch.tensor([g.size - 1 for g in groups]))  # fmt: skip
    keeps = {g.name: keep_mask(g.size, torch.randperm(g.size, generator=gen)[:c].tolist())
             for g, c in zip(groups, counts.tolist(), strict=True) if c}  # fmt: skip
    pruned = copy.deepcopy(model)
    pruned_graph = surgery.build_graph(pruned, inputs)
    for name, keep in keeps.items():
        surgery.prune_step(pruned, pruned_graph, [name, True, (~keep).nonzero().flatten().tolist()])
    x = torch.randn(16, 1, 32, 32, generator=gen)
    with torch.no_grad():
        y_pruned, y_full = pruned(x).argmax(1), model(x).argmax(1)
    assert not torch.equal(y_pruned, y_full)  # the masks matter
    maps = {g.name: surgery.output_channel_maps(model, graph, g.name) for g in groups}
    model.train()
    with GroupScorer(model, maps, [(x, y_pruned)]) as scorer:
        assert scorer.accuracy_of(keeps) == 100.0
        assert scorer.accuracy() == pytest.approx(100.0 * float((y_full == y_pruned).float().mean()))
    assert model.training
    costs = CostModel.of(model, graph, [g.name for g in groups], inputs)
    before, after = model_cost(model, inputs), model_cost(pruned, inputs)
    assert [int(v) for v in costs.cost(torch.zeros(len(groups)))] == [before.macs, before.params]
    macs, params = costs.cost(counts)
    assert float(params) == pytest.approx(after.params, rel=2e-3)
    predicted, measured = before.macs - float(macs), before.macs - after.macs
    assert 0.95 * measured <= predicted <= measured  # activations and pooling are left out: a small underestimate


def test_a_calibrated_sample_scores_removal_then_batchnorm_reestimation() -> None:
    """With calibration inputs a sample is scored as if its channels were removed and every BatchNorm from the
    first masked layer on re-estimated; the model's statistics are restored afterwards."""
    model = _model("vgg11")
    inputs, graph, groups = _groups(model)
    gen = torch.Generator().manual_seed(2)
    keeps = {g.name: keep_mask(g.size, torch.randperm(g.size, generator=gen)[: g.size // 2].tolist())
             for g in groups[::2]}  # fmt: skip
    calibration = [torch.randn(12, 1, 32, 32, generator=gen) for _ in range(2)]
    x = torch.randn(32, 1, 32, 32, generator=gen)
    pruned = copy.deepcopy(model)
    pruned_graph = surgery.build_graph(pruned, inputs)
    for name, keep in keeps.items():
        surgery.prune_step(pruned, pruned_graph, [name, True, (~keep).nonzero().flatten().tolist()])
    reestimate_batchnorm(pruned, calibration)  # every BatchNorm runs after the first masked layer (features.0)
    with torch.no_grad():
        y = pruned.eval()(x).argmax(1)
    maps = {g.name: surgery.output_channel_maps(model, graph, g.name) for g in groups}
    before = [b.clone() for b in model.buffers()]
    with GroupScorer(model, maps, [(x, y)], calibration=calibration) as scorer:
        assert scorer.accuracy_of(keeps) == 100.0
    with GroupScorer(model, maps, [(x, y)]) as plain:
        assert plain.accuracy_of(keeps) < 100.0  # re-estimation changes the score
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
