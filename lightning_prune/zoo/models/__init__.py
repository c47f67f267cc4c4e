"""Model zoo: CIFAR-style CNNs for pruning experiments, plus any torchvision classification model.

Use :func:`build_model` to construct a model by name. Built-in names are listed in :data:`MODEL_NAMES`;
any other name is looked up in ``torchvision.models`` (built without pretrained weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .inception import InceptionModule, InceptionSmall
from .mobilenet import InvertedResidual, MobileNetV2Small
from .resnet_cifar import BasicBlock, CifarResNet
from .vgg import VGG, VGG_CFGS

__all__ = [
    "MODEL_NAMES",
    "VGG",
    "VGG_CFGS",
    "BasicBlock",
    "CifarResNet",
    "InceptionModule",
    "InceptionSmall",
    "InvertedResidual",
    "MobileNetV2Small",
    "build_model",
    "list_torchvision_models",
]


def _vgg(depth: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
        return VGG(depth=depth, num_classes=num_classes, in_channels=in_channels, **kwargs)

    return factory


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
        return CifarResNet(depth=depth, num_classes=num_classes, in_channels=in_channels, **kwargs)

    return factory


_BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "vgg11": _vgg(11),
    "vgg13": _vgg(13),
    "vgg16": _vgg(16),
    "vgg19": _vgg(19),
    "resnet20": _resnet(20),
    "resnet32": _resnet(32),
    "resnet56": _resnet(56),
    "resnet110": _resnet(110),
    "mobilenetv2_small": MobileNetV2Small,
    "inception_small": InceptionSmall,
}

#: Names of the built-in (CIFAR-style) models accepted by :func:`build_model`.
MODEL_NAMES: tuple[str, ...] = tuple(_BUILTINS)

# torchvision models whose auxiliary heads must be disabled to return a plain logits tensor.
_AUX_LOGITS_MODELS = ("googlenet", "inception_v3")


def list_torchvision_models() -> list[str]:
    """Names of the torchvision classification models usable with :func:`build_model`."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first ``nn.Conv2d`` of ``model`` for an equivalent one reading ``in_channels`` channels."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise ValueError(f"Cannot adapt {type(model).__name__} to in_channels={in_channels}: it has no nn.Conv2d.")
    name, module = found
    if module.groups != 1:
        raise ValueError(
            f"Cannot adapt {type(model).__name__} to in_channels={in_channels}: its first conv is grouped."
        )
    new_conv = nn.Conv2d(
        in_channels,
        module.out_channels,
        kernel_size=module.kernel_size,  # type: ignore[arg-type]
        stride=module.stride,  # type: ignore[arg-type]
        padding=module.padding,  # type: ignore[arg-type]
        dilation=module.dilation,  # type: ignore[arg-type]
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    nn.init.kaiming_normal_(new_conv.weight, mode="fan_out", nonlinearity="relu")
    if new_conv.bias is not None:
        nn.init.zeros_(new_conv.bias)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new_conv)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a classification model by name.

    Args:
        name: A built-in name from :data:`MODEL_NAMES` (e.g. ``"vgg16"``, ``"resnet56"``) or any torchvision
            classification model name (e.g. ``"resnet18"``), built with ``weights=None``.
        num_classes: Number of output logits.
        in_channels: Number of input image channels. For torchvision models the first ``nn.Conv2d`` is
            replaced by an equivalent conv taking ``in_channels`` channels when this is not 3.
        **kwargs: Passed to the model constructor (e.g. ``width`` for built-ins).

    Returns:
        A model mapping ``(B, in_channels, H, W)`` images to ``(B, num_classes)`` logits.

    Raises:
        ValueError: If ``name`` is neither a built-in nor a torchvision classification model.
    """
    key = name.strip().lower()
    if key in _BUILTINS:
        return _BUILTINS[key](num_classes=num_classes, in_channels=in_channels, **kwargs)

    import torchvision

    if key not in list_torchvision_models():
        raise ValueError(
            f"Unknown model name {name!r}. Built-in models: {', '.join(MODEL_NAMES)}. "
            "Any torchvision classification model name also works (see "
            "torchvision.models.list_models(module=torchvision.models), e.g. 'resnet18', 'mobilenet_v2')."
        )
    kwargs = dict(kwargs)
    if key in _AUX_LOGITS_MODELS:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
        if in_channels != 3:
            # The ImageNet input transform indexes RGB channels explicitly.
            kwargs.setdefault("transform_input", False)
    model = torchvision.models.get_model(key, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model
