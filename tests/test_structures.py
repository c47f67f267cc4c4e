"""One tiny model per special structure, through the surgery: pick a group, cut it (with an optimizer), keep the
output shape, reload by replaying the history on a fresh copy (identical outputs), then train one more step."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d

from lightning_prune.engine import surgery

SIZE = 32


class _TinyConvNeXt(nn.Module):
    """Stem + LayerNorm2d + two ConvNeXt blocks (depthwise conv, channel-last LayerNorm, MLP, layer scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16))
        self.blocks = nn.Sequential(CNBlock(16, 0.1, 0.0), CNBlock(16, 0.1, 0.0))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def _dense() -> nn.Module:
    return torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
    )


def _regnet() -> nn.Module:
    return torchvision.models.regnet_y_400mf(num_classes=10)


def _has(model: nn.Module, kind: type) -> Callable[[surgery.ChannelGroup], bool]:
    return lambda g: any(isinstance(model.get_submodule(m), kind) for m in g.members)


# (model factory, predicate choosing a group that exercises the structure)
CASES = {
    "grouped": (_regnet, lambda model: lambda g: g.unit > 1),
    "shuffle": (
        lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10),
        lambda model: lambda g: "branch2" in g.name,
    ),
    "layernorm": (_TinyConvNeXt, lambda model: lambda g: g.name == "stem.0"),
    "squeeze_excitation": (
        lambda: torchvision.models.mobilenet_v3_small(num_classes=10),
        lambda model: lambda g: any("fc2" in m for m in g.members),
    ),
    "dense": (_dense, lambda model: lambda g: g.name == "features.denseblock1.denselayer1.conv2"),
    "depthwise": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
        lambda model: lambda g: any(model.get_submodule(m).groups > 1 for m in g.members),
    ),
}


def _fresh(factory: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return factory().eval()


@pytest.mark.parametrize("structure", list(CASES))
def test_structure_prunes_reloads_and_trains(structure: str) -> None:
    torch.set_num_threads(1)
    factory, choose = CASES[structure]
    model = _fresh(factory)
    inputs = surgery.example_input(model, [1, 3, SIZE, SIZE])
    graph = surgery.build_graph(model, inputs)
    skipped: dict[str, str] = {}
    groups = surgery.channel_groups(model, graph, inputs, skipped)
    group = next(g for g in groups if choose(model)(g))
    if structure == "shuffle":
        assert any("channel shuffle" in reason for reason in skipped.values()), skipped
        shuffled = {n for n in skipped if n.endswith("branch2.5")}  # each block's output joins the shuffled stream
        assert shuffled and not shuffled & {g.name for g in groups}
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).shape
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    units = surgery.channel_units(model, graph, group.name)
    assert all(len(u) == group.unit for u in units)
    removed = [i for u in units[:2] for i in u]
    step = surgery.prune_step(model, graph, [group.name, True, removed], optimizers=[optimizer])
    assert surgery.out_channels(model.get_submodule(group.name)) == group.size - len(removed)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected

    fresh = _fresh(factory)
    surgery.replay(fresh, [step], surgery.example_input(fresh, [1, 3, SIZE, SIZE]))
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), out)

    model.train()
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert params == {id(p) for p in model.parameters()}
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
