"""Tests for the model zoo in ``lightning_prune.zoo.models``."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from lightning_prune.zoo.models import (
    MODEL_NAMES,
    VGG,
    CifarResNet,
    InceptionSmall,
    MobileNetV2Small,
    build_model,
)

EXPECTED_NAMES = {
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet110",
    "mobilenetv2_small",
    "inception_small",
}


def _conv_channels(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_model_names() -> None:
    assert isinstance(MODEL_NAMES, tuple)
    assert set(MODEL_NAMES) == EXPECTED_NAMES


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_output_shape(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_builtin_classes() -> None:
    assert isinstance(build_model("vgg16"), VGG)
    assert isinstance(build_model("resnet56"), CifarResNet)
    assert isinstance(build_model("mobilenetv2_small"), MobileNetV2Small)
    assert isinstance(build_model("inception_small"), InceptionSmall)
    assert build_model("resnet110").depth == 110
    assert build_model("VGG19").depth == 19


def test_vgg16_macs_and_params() -> None:
    model = VGG(depth=16).eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.randn(1, 3, 32, 32))
    assert abs(macs - 313e6) / 313e6 < 0.02, macs
    assert 14.5e6 <= params <= 15.5e6, params
    assert isinstance(model.features, nn.Sequential)
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Linear]


def test_small_models_are_small() -> None:
    for name in ("mobilenetv2_small", "inception_small"):
        params = sum(p.numel() for p in build_model(name).parameters())
        assert params < 1_000_000, (name, params)


@pytest.mark.parametrize("name", ["vgg16", "resnet20", "mobilenetv2_small", "inception_small"])
def test_width_multiplier_shrinks_channels(name: str) -> None:
    full = _conv_channels(build_model(name))
    half = _conv_channels(build_model(name, width=0.5))
    assert len(full) == len(half)
    assert all(h <= f for h, f in zip(half, full, strict=True))
    assert sum(half) < sum(full)
    with torch.no_grad():
        assert build_model(name, width=0.5).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg_width_exact_channels() -> None:
    model = VGG(depth=16, width=0.25)
    assert _conv_channels(model)[:3] == [16, 16, 32]
    assert model.classifier[0].in_features == 128
    assert min(_conv_channels(VGG(depth=11, width=0.001))) == 1


def test_torchvision_model() -> None:
    model = build_model("resnet18", num_classes=10, in_channels=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError) as exc:
        build_model("not_a_model")
    msg = str(exc.value)
    assert "not_a_model" in msg
    assert "vgg16" in msg and "resnet56" in msg and "inception_small" in msg
    assert "torchvision" in msg


def test_unknown_vgg_depth_raises() -> None:
    with pytest.raises(ValueError, match=r"11, 13, 16, 19"):
        VGG(depth=15)


def test_bad_resnet_depth_raises() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_fx_symbolic_trace(name: str) -> None:
    model = build_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def _target_convs(name: str, model: nn.Module) -> list[nn.Conv2d]:
    if name == "resnet20":
        # Stem (coupled with every identity residual in stage 1) and a residual-coupled block output.
        return [model.conv1, model.layer2[0].conv2, model.layer3[1].conv1]
    if name == "mobilenetv2_small":
        # A block's projection (coupled through the residual add) and an expansion (coupled to a depthwise).
        return [model.features[3].conv[-1][0], model.features[4].conv[0][0]]
    # Branch convs feeding the channel concatenation, plus a reduce conv inside a branch.
    return [model.inception1.branch2[1][0], model.inception2.branch4[1][0], model.inception3.branch3[0][0]]


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_small", "inception_small"])
def test_torch_pruning_coupling(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    example = torch.randn(1, 3, 32, 32)
    n_params = sum(p.numel() for p in model.parameters())
    for conv in _target_convs(name, model):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        before = conv.out_channels
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1])
        group.prune()
        assert conv.out_channels == before - 2
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < n_params
