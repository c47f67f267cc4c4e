"""Tests for `lightning_prune.engine.scoring`: the cached engine against the full forward and physical removal."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune import DistributionOptions, DistributionPruneCallback
from lightning_prune.engine import surgery
from lightning_prune.engine.scoring import CandidateScorer, evaluate
from lightning_prune.engine.split import split_before
from lightning_prune.search.agents import LayerSearch
from lightning_prune.zoo.models import build_model

EXAMPLE = torch.zeros(1, 3, 32, 32)


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights, BatchNorm statistics measured on random inputs (activations stay well scaled, so
    predictions have clear margins) and random BatchNorm affine terms (a zeroed conv output is not a zeroed
    BN output); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32, generator=gen))
        for m in norms:
            m.momentum = 0.1
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.6 - 0.3)
    return model.eval()


def _batches(model: nn.Module, n: int = 2, size: int = 24, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random inputs labelled with the unpruned model's predictions (its accuracy is 100).

    The last linear layer's bias is set to cancel the features' mean over these inputs, so that predictions
    differ between inputs and removing channels changes some of them."""
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(size, 3, 32, 32, generator=gen) + torch.randn(size, 3, 1, 1, generator=gen) for _ in range(n)]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    features = []
    handle = head.register_forward_pre_hook(lambda m, inputs: features.append(inputs[0]))
    with torch.no_grad():
        for x in xs:
            model(x)
        handle.remove()
        head.bias.copy_(-head(torch.cat(features)).mean(0) + head.bias)
        return [(x, model(x).argmax(-1)) for x in xs]


def _pruned_accuracy(model: nn.Module, name: str, keep: torch.Tensor, batches: list) -> float:
    net = copy.deepcopy(model)
    removed = (~keep).nonzero().flatten().tolist()
    if removed:
        surgery.prune_step(net, surgery.build_graph(net, EXAMPLE), [name, True, removed])
    with torch.no_grad():
        correct = sum(int((net(x).argmax(-1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


def _keep_masks(size: int, seed: int) -> list[torch.Tensor]:
    """A mild mask (folded into the next convolution's weights) and a strong one (its input channels sliced)."""
    gen = torch.Generator().manual_seed(seed)
    masks = []
    for fraction in (0.1, 0.6):
        keep = torch.ones(size, dtype=torch.bool)
        keep[torch.randperm(size, generator=gen)[: max(1, int(fraction * size))]] = False
        masks.append(keep)
    return masks


CASES = [
    ("vgg11", {"width": 0.25}, ["features.0", "features.8", "features.15", "features.25"]),
    ("resnet20", {"width": 0.5}, ["conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.conv2", "layer3.2.conv1"]),
    ("mobilenetv2_small", {"width": 0.5}, ["features.0.0", "features.2.conv.0.0", "features.4.conv.2.0"]),
    (
        "inception_small",
        {"width": 0.25},
        ["stem.0", "inception1.branch1.0", "inception2.branch3.1.0", "inception3.branch4.1.0"],
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "layers"), CASES, ids=[c[0] for c in CASES])
def test_cached_equals_uncached_equals_physical_removal(name: str, kwargs: dict, layers: list[str]) -> None:
    model = _randomized(build_model(name, num_classes=10, **kwargs))
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    groups = surgery.select_groups(surgery.channel_groups(model, graph, EXAMPLE), layers)
    assert len(groups) >= len(layers)
    accuracies = []
    for i, group in enumerate(groups):
        maps = surgery.output_channel_maps(model, graph, group.name)
        masks = _keep_masks(group.size, seed=i)
        with CandidateScorer(model, maps, batches, cache=True) as cached:
            assert cached.cached, group.name
            fast = [cached.accuracy(), *(cached.accuracy(k) for k in masks), cached.accuracy(masks[0])]
        with CandidateScorer(model, maps, batches, cache=False) as full:
            assert not full.cached
            slow = [full.accuracy(), *(full.accuracy(k) for k in masks), full.accuracy(masks[0])]
        assert fast == slow, group.name
        assert fast[0] == 100.0 and fast[2] == _pruned_accuracy(model, group.name, masks[1], batches), group.name
        assert fast[1] == fast[3], group.name  # the cache survives scoring other candidates
        accuracies += fast[1:3]
    assert min(accuracies) < 100.0  # the masks change predictions: the comparison is not vacuous


@pytest.mark.parametrize("layer", ["features.4", "features.18", "features.22"])
def test_split_outputs_match_the_physically_pruned_model(layer: str) -> None:
    model = _randomized(build_model("vgg11", num_classes=10, width=0.25))
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, layer)
    split = split_before(model, maps)
    assert split is not None
    x = torch.randn(8, 3, 32, 32)
    for keep in _keep_masks(len(maps[0][1]), seed=1):
        net = copy.deepcopy(model)
        surgery.prune_step(net, surgery.build_graph(net, EXAMPLE), [layer, True, (~keep).nonzero().flatten().tolist()])
        with torch.no_grad():
            split.set(keep)
            torch.testing.assert_close(split.suffix(*split.prefix(x)), net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("layer", "cached_shape", "first_after"),
    [("features.22", (2, 128, 2, 2), "features.26"), ("features.18", (2, 128, 2, 2), "features.23")],
)
def test_prefix_caches_everything_before_the_mask(layer: str, cached_shape: tuple, first_after: str) -> None:
    """VGG-11: features.22 -> BN -> ReLU -> features.25: the cache holds the ReLU output and the mask is folded
    into features.25; features.18 -> BN -> ReLU -> max-pool -> features.22: the mask moves past the pool."""
    model = build_model("vgg11", num_classes=10, width=0.25).eval()
    graph = surgery.build_graph(model, EXAMPLE)
    split = split_before(model, surgery.output_channel_maps(model, graph, layer))
    assert split is not None
    with torch.no_grad():
        values = split.prefix(torch.randn(2, 3, 32, 32))
    assert [tuple(v.shape) for v in values] == [cached_shape]
    calls = [n.target for n in split.suffix.graph.nodes if n.op == "call_module"]
    assert calls[:2] == ["_candidate_mask_0", first_after]
    assert isinstance(split.suffix.get_submodule("_candidate_mask_0").conv, nn.Conv2d)


def test_cache_memory_bound_falls_back_to_the_full_forward() -> None:
    model = _randomized(build_model("resnet20", num_classes=10, width=0.25))
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "layer1.0.conv1")
    masks = _keep_masks(len(maps[0][1]), seed=0)
    with CandidateScorer(model, maps, batches, max_cache_mb=1e-3) as tiny:
        assert not tiny.cached
        bounded = [tiny.accuracy(k) for k in masks]
    with CandidateScorer(model, maps, batches, max_cache_mb=64) as roomy:
        assert roomy.cached
        assert [roomy.accuracy(k) for k in masks] == bounded


def _state(model: nn.Module) -> tuple:
    return (
        [m.training for m in model.modules()],
        [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        [(p.data_ptr(), p.stride(), p.requires_grad) for p in model.parameters()],
        [b.data_ptr() for b in model.buffers()],
    )


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("fail", [False, True])
def test_model_is_restored_on_exit(cache: bool, fail: bool) -> None:
    model = build_model("vgg11", num_classes=10, width=0.125).train()
    model.features[1].eval()  # a mixed mode must come back as it was
    batches = _batches(model.eval(), n=1, size=4)
    model.train()
    model.features[1].eval()
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "features.4")
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom") if fail else nullcontext():
        with CandidateScorer(model, maps, batches, cache=cache) as scorer:
            assert not model.training
            assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
            scorer.accuracy(torch.arange(len(maps[0][1])) % 2 == 0)
            if fail:
                raise RuntimeError("boom")
    assert _state(model) == before
    assert model.features[0].weight.is_contiguous()


def test_channels_last_model_stays_channels_last() -> None:
    model = build_model("vgg11", num_classes=10, width=0.125).to(memory_format=torch.channels_last).eval()
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "features.0")
    with CandidateScorer(model, maps, _batches(model, n=1, size=4)) as scorer:
        assert scorer.accuracy() == 100.0
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


class _Untraceable(nn.Module):
    """Data-dependent control flow: `torch.fx` cannot trace it (torch-pruning, which runs it, can)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        if x.sum() > 0:
            x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_untraceable_model_is_scored_with_the_full_forward() -> None:
    model = _randomized(_Untraceable())
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "conv1")
    assert split_before(model, maps) is None
    keep = torch.tensor([True, False, True, False, False, True, True, False])
    expected = _pruned_accuracy(model, "conv1", keep, batches)
    with CandidateScorer(model, maps, batches, cache=True) as scorer:
        assert not scorer.cached
        assert scorer.accuracy(keep) == expected < 100.0
        assert scorer.accuracy() == 100.0


class _InPlaceMerge(nn.Module):
    """`a.add_(b)` writes into a value that no mask affects (cached) from a masked branch (`torch.fx` traces
    `a += b` as an out-of-place add)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b, self.bn_b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x).add_(self.bn_b(self.conv_b(x)))
        return self.fc(a.mean((2, 3)))


class _InPlaceAfterReader(nn.Module):
    """A mask-independent in-place op after a masked reader: computing it first would change the result."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b, self.bn_b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        c = a * self.bn_b(self.conv_b(x))
        a.relu_()
        return self.fc((c + a).mean((2, 3)))


class _ReadAfterInPlaceMerge(nn.Module):
    """A mask-independent reader of a value after a masked branch wrote into it: computing it first would
    read the value before the write."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b, self.bn_b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv_c = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv_a(x)
        a.add_(self.bn_b(self.conv_b(x)))
        return self.fc((self.conv_c(a) + a).mean((2, 3)))


def _hooked_output(model: nn.Module, module: nn.Module, keep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    handle = module.register_forward_hook(lambda m, i, out: out * keep.float().view(1, -1, 1, 1))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def test_cached_values_are_protected_from_in_place_ops() -> None:
    model = _randomized(_InPlaceMerge())
    maps = [(model.bn_b, torch.arange(4))]
    split = split_before(model, maps)
    assert split is not None
    x, keep = torch.randn(3, 3, 8, 8), torch.tensor([True, False, True, False])
    with torch.no_grad():
        cached = split.prefix(x)
        split.set(keep)
        first, second = split.suffix(*cached), split.suffix(*cached)
    torch.testing.assert_close(first, _hooked_output(model, model.bn_b, keep, x))
    torch.testing.assert_close(second, first)


@pytest.mark.parametrize("net", [_InPlaceAfterReader, _ReadAfterInPlaceMerge])
def test_unsafe_reordering_falls_back_to_the_full_forward(net: type[nn.Module]) -> None:
    model = _randomized(net())
    maps = [(model.bn_b, torch.arange(4))]
    assert split_before(model, maps) is None
    x = torch.randn(6, 3, 8, 8)
    keep = torch.tensor([True, False, False, True])
    expected = _hooked_output(model, model.bn_b, keep, x).argmax(-1)
    with torch.no_grad():
        labels = model(x).argmax(-1)
    with CandidateScorer(model, maps, [(x, labels)]) as scorer:
        assert not scorer.cached
        assert scorer.accuracy(keep) == 100.0 * int((expected == labels).sum()) / len(labels)


def test_decisions_identical_with_and_without_the_engine() -> None:
    model = _randomized(build_model("vgg11", num_classes=10, width=0.25))
    batches = _batches(model, n=2, size=32)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "features.8")
    weight = model.get_submodule("features.8").weight
    runs = []
    for cache in (True, False):
        search = LayerSearch(weight, min_keep=2, seed=3, lr=0.2, init_keep=0.6)
        trace = []
        with CandidateScorer(model, maps, batches, cache=cache) as scorer:
            assert scorer.cached == cache
            for _ in range(4):
                masks = search.sample(6)
                accs = [scorer.accuracy(m) for m in masks]
                search.update(masks, torch.tensor(accs) - 0.5 * masks.sum(1))
                trace.append((masks, accs))
        runs.append((trace, search.probs()))
    (trace_a, probs_a), (trace_b, probs_b) = runs
    for (masks_a, accs_a), (masks_b, accs_b) in zip(trace_a, trace_b, strict=True):
        assert torch.equal(masks_a, masks_b)
        assert accs_a == accs_b
    assert len({a for _, accs in trace_a for a in accs}) > 1  # candidates were told apart
    assert torch.equal(probs_a, probs_b)


def test_a_mask_scored_before_is_answered_without_a_forward_pass() -> None:
    model = _randomized(build_model("vgg11", num_classes=10, width=0.25))
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "features.4")
    scorer = CandidateScorer(model, maps, batches)
    mild, strong = _keep_masks(scorer.size, seed=0)
    with scorer:
        first = [scorer.accuracy(mild), scorer.accuracy(strong)]
        assert [scorer.accuracy(mild.clone()), scorer.accuracy(strong.int())] == first
        assert scorer.forward_passes == 2
    with scorer:  # a new context may see a changed model: nothing is remembered
        assert scorer.accuracy(mild) == first[0]
        assert scorer.forward_passes == 3
    assert first[0] != first[1]


def _calibration(n: int = 2, size: int = 24, seed: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 32, 32, generator=gen) * 1.5 + 0.3 for _ in range(n)]


def _removed_and_recalibrated(
    model: nn.Module, name: str, keep: torch.Tensor, batches: list, calibration: list, first_norm: int
) -> float:
    """Accuracy of a VGG copy with the filters physically removed and `features[first_norm:]`'s BatchNorm
    statistics re-estimated on `calibration` (cumulative average)."""
    net = copy.deepcopy(model)
    surgery.prune_step(net, surgery.build_graph(net, EXAMPLE), [name, True, (~keep).nonzero().flatten().tolist()])
    norms = [m for m in net.features[first_norm:] if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for x in calibration:
            net(x)
        net.eval()
        correct = sum(int((net(x).argmax(-1) == y).sum()) for x, y in batches)
    return 100.0 * correct / sum(len(y) for _, y in batches)


@pytest.mark.parametrize("layer", ["features.4", "features.15"])
def test_calibrated_scores_match_removal_then_batchnorm_reestimation(layer: str) -> None:
    """The engine re-estimates the BatchNorm layers after the mask (physical removal + re-estimation of the later
    BatchNorm layers); the full forward re-estimates every BatchNorm from the group's first layer on."""
    model = _randomized(build_model("vgg11", num_classes=10, width=0.25))
    batches, calibration = _batches(model), _calibration()
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, layer)
    masks = _keep_masks(len(maps[0][1]), seed=3)
    own_norm = int(layer.split(".")[1]) + 1
    before = [b.clone() for b in model.buffers()]
    for cache, first_norm in ((True, own_norm + 1), (False, own_norm)):
        with CandidateScorer(model, maps, batches, cache=cache, calibration=calibration) as scorer:
            assert scorer.cached == cache
            scores = [scorer.accuracy(k) for k in masks]
        expected = [_removed_and_recalibrated(model, layer, k, batches, calibration, first_norm) for k in masks]
        assert scores == expected, (cache, scores, expected)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))  # statistics restored
    assert all(m.momentum == 0.1 and not m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with CandidateScorer(model, maps, batches) as plain:
        assert [plain.accuracy(k) for k in masks] != scores  # re-estimation changes the scores


def test_evaluate_scores_in_eval_mode_and_restores_the_mode() -> None:
    """`evaluate` is the eval-mode accuracy whatever mode the model is in, and leaves every submodule's mode."""
    model = _randomized(build_model("vgg11", num_classes=10, width=0.25))
    batches = _batches(model)  # labelled with the eval-mode predictions
    model.train()
    model.features[1].eval()  # a frozen BatchNorm stays frozen
    assert evaluate(model, batches) == 100.0
    assert [m.training for m in model.modules()] == [m is not model.features[1] for m in model.modules()]
    flipped = [(x, (y + 1) % 10) for x, y in batches]
    assert evaluate(model.eval(), batches[:1] + flipped[1:]) == 50.0
    assert not model.training


def test_keep_mask_of_the_wrong_size_is_rejected() -> None:
    model = build_model("vgg11", num_classes=10, width=0.125).eval()
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "features.0")
    with CandidateScorer(model, maps, _batches(model, n=1, size=2)) as scorer:
        with pytest.raises(ValueError, match="has 3 entries but the group has 8 channels"):
            scorer.accuracy(torch.ones(3, dtype=torch.bool))


def test_autocast_forward_context_gives_the_same_accuracies() -> None:
    model = _randomized(build_model("resnet20", num_classes=10, width=0.25))
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "layer2.0.conv1")
    masks = _keep_masks(len(maps[0][1]), seed=2)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731 - a forward-context factory
    results = []
    for cache in (True, False):
        with CandidateScorer(model, maps, batches, forward_context=bf16, cache=cache) as scorer:
            assert scorer.cached == cache
            results.append([scorer.accuracy(k) for k in masks])
    assert results[0] == results[1]


class ConvNeXtLike(nn.Module):
    """A stem and one ConvNeXt block: depthwise conv, then channels last (LayerNorm, MLP), back to channels first,
    plus the residual; 32x32 inputs give 8x8 maps of 16 channels (so dim 1 never fits the channels-last tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.dwconv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
        self.mid = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        x = x + self.fc2(torch.nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.head(torch.relu(self.mid(x)).mean((2, 3)))


def test_a_channels_last_block_is_masked_on_its_channel_axis() -> None:
    """The group's LayerNorm and Linear outputs hold the channels last (a mask over dim 1 failed on them); zeroing
    channels before a LayerNorm only approximates their removal, so the engine is compared with the full forward."""
    torch.manual_seed(0)
    model = ConvNeXtLike().eval()
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    maps = surgery.output_channel_maps(model, graph, "stem")
    assert {type(m) for m, _ in maps} >= {nn.Conv2d, nn.LayerNorm, nn.Linear}  # both layouts in one group
    keep = torch.ones(16, dtype=torch.bool)
    keep[[1, 5, 9, 12]] = False
    scores = []
    for cache in (True, False):
        with CandidateScorer(model, maps, batches, cache=cache) as scorer:
            assert scorer.cached == cache
            scores.append((scorer.accuracy(), scorer.accuracy(keep)))
    assert scores[0] == scores[1] and scores[0][0] == 100.0 > scores[0][1]


class _ConvNeXtModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = ConvNeXtLike()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_a_channels_last_block_is_pruned_through_a_callback(tmp_path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    loader = DataLoader(data, batch_size=16)
    options = DistributionOptions(num_samples=2, updates=1, elite_size=1, reward_batches=1, calibration_batches=1)
    callback = DistributionPruneCallback(target=0.25, step_size=0.25, layers=["net.stem"], options=options)
    module = _ConvNeXtModule()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(module, loader, loader)
    assert callback.done and module.net.stem.out_channels == module.net.norm.normalized_shape[0] == 12
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


class _DividesByChannelZero(nn.Module):
    """Logits divided by the mean size of channel 0 of a convolution: removing that channel makes them infinite."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head(y.mean((2, 3))) / y[:, 0].abs().mean((1, 2))[:, None]


@pytest.mark.parametrize("cache", [True, False])
def test_a_candidate_with_outputs_that_are_not_finite_scores_nan(cache: bool) -> None:
    torch.manual_seed(0)
    model = _DividesByChannelZero().eval()
    batches = _batches(model)
    without_zero, without_one = torch.ones(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    without_zero[0], without_one[1] = False, False
    with CandidateScorer(model, [(model.conv, torch.arange(4))], batches, cache=cache) as scorer:
        assert scorer.accuracy() == 100.0 and math.isfinite(scorer.accuracy(without_one))
        assert math.isnan(scorer.accuracy(without_zero))
    with torch.no_grad():
        model.conv.weight[0] = 0.0
        model.conv.bias[0] = 0.0
    assert math.isnan(evaluate(model, batches))


class _Ghost(nn.Module):
    """A ghost bottleneck (GhostNet): half the channels from a convolution, half from a cheap depthwise one on
    them, concatenated and added to a shortcut; each branch holds only half of the shortcut's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
        self.shortcut = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        return self.head(self.mix(torch.cat([x1, self.cheap(x1)], dim=1) + self.shortcut(x)))


def test_concatenated_branches_are_masked_like_the_physical_cut() -> None:
    # ghostnet / mixnet (timm): a branch holds only part of the group's root channels, and building its index
    # raised IndexError in the search; each branch now maps the root channels it holds.
    model = _randomized(_Ghost())
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    groups = surgery.channel_groups(model, graph, EXAMPLE)
    assert any(len(g.members) > 1 for g in groups)
    for group in groups:
        maps = surgery.output_channel_maps(model, graph, group.name)
        for keep in _keep_masks(group.size, seed=3):
            if group.size == 8:  # shortcut channels c and c + 4 hang on the same primary channel: one unit
                keep = keep[:4].repeat(2)
            expected = _pruned_accuracy(model, group.name, keep, batches)
            for cache in (True, False):
                with CandidateScorer(model, maps, batches, cache=cache) as scorer:
                    assert scorer.accuracy(keep) == expected, (group.name, cache)


def test_the_distribution_search_scores_and_ranks_concatenated_branches() -> None:
    # DistributionPruneCallback indexed the same maps directly (IndexError on ghost / mixnet blocks).
    from lightning_prune.engine.importance import filter_scores, group_importance
    from lightning_prune.engine.scoring import GroupScorer
    from lightning_prune.search.distribution import keep_mask

    model = _randomized(_Ghost())
    batches = _batches(model)
    graph = surgery.build_graph(model, EXAMPLE)
    groups = surgery.channel_groups(model, graph, EXAMPLE)
    maps = {g.name: surgery.output_channel_maps(model, graph, g.name) for g in groups}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    importance = group_importance(maps, filter_scores(model, convs, "l1"))
    assert all(len(importance[g.name]) == g.size for g in groups)
    with GroupScorer(model, maps, batches) as scorer:
        for group in groups:
            keep = keep_mask(group.size, [0])
            assert math.isfinite(scorer.accuracy_of({group.name: keep}))
