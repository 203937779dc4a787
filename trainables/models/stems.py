"""The ``cifar_stem`` option: a stem that keeps a 32×32 input's resolution (3×3 stride 1, no max-pool), by family.

A recipe is found from the built model's layout (its stem's attributes), not from its name, so a timm name, a
torchvision model and a user's network of a known family all get it. A model of no known family is a ``ValueError``
that names its class.
"""

from __future__ import annotations

from torch import nn

FAMILIES = (
    "ResNet (conv1 + maxpool), RegNet (stem.conv), ConvNeXt (patchify stem), "
    "EfficientNet/MobileNet (conv_stem), ShuffleNetV2 (conv1[0] + maxpool)"
)


def stride_one(conv: nn.Conv2d, kernel: int | None = None) -> nn.Conv2d:
    """The same conv (channels, bias) with stride 1 and 'same' padding (timm's Conv2dSame included)."""
    k = kernel or conv.kernel_size[0]
    return nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=1, padding=k // 2, bias=conv.bias is not None)


def _resnet(model: nn.Module) -> bool:  # timm and torchvision ResNet
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
        return False
    model.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return True


def _regnet(model: nn.Module) -> bool:  # timm RegNet: stem = ConvNormAct(conv 3×3/2)
    conv = getattr(getattr(model, "stem", None), "conv", None)
    if not isinstance(conv, nn.Conv2d):
        return False
    model.stem.conv = stride_one(conv)
    return True


def _convnext(model: nn.Module) -> bool:  # timm ConvNeXt: stem = Sequential(Conv2d 4×4/4 patchify, LayerNorm2d)
    stem = getattr(model, "stem", None)
    if not (isinstance(stem, nn.Sequential) and len(stem) and isinstance(stem[0], nn.Conv2d)):
        return False
    first = stem[0]
    if first.stride[0] != first.kernel_size[0] or first.stride[0] < 2:
        return False  # not a patchify stem
    stem[0] = stride_one(first, kernel=3)  # same channel count: the stages after it are unchanged
    return True


def _conv_stem(model: nn.Module) -> bool:  # timm MobileNetV3 / EfficientNet family
    if not isinstance(getattr(model, "conv_stem", None), nn.Conv2d):
        return False
    model.conv_stem = stride_one(model.conv_stem)
    return True


def _shufflenet(model: nn.Module) -> bool:  # torchvision ShuffleNetV2
    if not (isinstance(getattr(model, "conv1", None), nn.Sequential) and hasattr(model, "maxpool")):
        return False
    model.conv1[0] = stride_one(model.conv1[0])
    model.maxpool = nn.Identity()
    return True


RECIPES = (_resnet, _regnet, _convnext, _conv_stem, _shufflenet)


def apply_cifar_stem(model: nn.Module, name: str = "") -> nn.Module:
    """``model`` with its stem keeping the input's resolution; a ``ValueError`` where no recipe fits."""
    if not any(recipe(model) for recipe in RECIPES):
        which = f"model {name!r} ({type(model).__name__})" if name else type(model).__name__
        raise ValueError(
            f"cifar_stem: there is no CIFAR stem recipe for {which}; recipes exist for {FAMILIES}. "
            "Leave cifar_stem off, or build the stem you want in your own factory "
            "(model: package.module:factory)"
        )
    return model
