"""Models from timm and torchvision, with the options every model here has: a CIFAR stem, dropout in the
head, and a base activation (``act``) that replaces the model's own at every site (``native`` keeps them)."""
from __future__ import annotations

from torch import nn

from trainables.insertion import apply_policy
from trainables.models.registry import register_model

TIMM_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv3_large_100", "efficientnetv2_rw_s", "tf_efficientnetv2_s")


def set_activation(model: nn.Module, act: str) -> nn.Module:
    """Every site of ``model`` becomes ``act`` (``native``: the model's own activations stay)."""
    if act != "native":
        apply_policy(model, "all", act)
    return model


def _stride_one(conv: nn.Conv2d) -> nn.Conv2d:
    """The same conv with stride 1 and 'same' padding (timm's Conv2dSame included)."""
    k = conv.kernel_size[0]
    return nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=1, padding=k // 2, bias=conv.bias is not None)


def _cifar_stem(model: nn.Module) -> None:
    if hasattr(model, "conv1") and hasattr(model, "maxpool") and isinstance(model.conv1, nn.Conv2d):  # timm ResNet
        model.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif hasattr(model, "conv_stem"):  # timm MobileNetV3 / EfficientNet family
        model.conv_stem = _stride_one(model.conv_stem)
    elif isinstance(getattr(model, "conv1", None), nn.Sequential):  # torchvision ShuffleNetV2
        model.conv1[0] = _stride_one(model.conv1[0])
        model.maxpool = nn.Identity()
    else:
        raise ValueError(f"no CIFAR stem recipe for {type(model).__name__}")


def _timm_factory(name: str):
    def build(num_classes: int, in_chans: int = 3, cifar_stem: bool = False, act: str = "native", dropout: float = 0.0):
        import timm  # imported when a timm model is built: a trial on an in-house model never pays for it

        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, drop_rate=dropout)
        if cifar_stem:
            _cifar_stem(model)
        return set_activation(model, act)

    build.__name__ = name
    return build


for _name in TIMM_MODELS:
    register_model(_name)(_timm_factory(_name))


@register_model("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0(num_classes: int, in_chans: int = 3, cifar_stem: bool = False, act: str = "native", dropout: float = 0.0):
    import torchvision

    model = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    if in_chans != 3:
        first = model.conv1[0]
        model.conv1[0] = nn.Conv2d(in_chans, first.out_channels, 3, stride=first.stride, padding=1, bias=False)
    if cifar_stem:
        _cifar_stem(model)
    if dropout > 0:  # torchvision's head has no dropout: put it where timm's heads have it, before the classifier
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return set_activation(model, act)
