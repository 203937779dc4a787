"""Networks the project does not define: timm's (any name of ``timm.list_models()``, a few registered under the
project's names) and a constructor given by import path ``package.module:factory`` (a user's own network, or
``torchvision.models:resnet18``), with the options every model has: a CIFAR stem (``stems``), dropout in the head, a
base activation (``act``) that replaces the model's own at every site (``native`` keeps them), and pretrained weights
read from a local file or timm's cache, never downloaded at trial time."""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from trainables.imports import import_object
from trainables.insertion import apply_policy
from trainables.models.registry import register_model
from trainables.models.stems import apply_cifar_stem

TIMM_MODELS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "mobilenetv3_large_100",
    "efficientnetv2_rw_s",
    "tf_efficientnetv2_s",
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def set_activation(model: nn.Module, act: str) -> nn.Module:
    """Every site of ``model`` becomes ``act`` (``native``: the model's own activations stay)."""
    if act != "native":
        apply_policy(model, "all", act)
    return model


@functools.cache
def timm_names() -> list[str]:
    import timm

    return timm.list_models()


def is_timm_model(name: str) -> bool:
    """``name`` is a timm architecture, or one with a pretrained tag (``resnet18.a1_in1k``)."""
    import timm

    return timm.is_model(name.partition(".")[0])


# ---- timm ----------------------------------------------------------------------------------------------------------


def cached_timm_weights(name: str) -> str | None:
    """The file of ``name``'s pretrained weights in the local Hugging Face or torch-hub cache, or None."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.partition("@")[0]
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else list(HF_WEIGHT_FILES)
        for filename in names:
            path = try_to_load_from_cache(repo, filename)
            if isinstance(path, str) and os.path.isfile(path):
                return path
    if cfg.url:
        path = os.path.join(timm.models._hub.get_cache_dir(), os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(path):
            return path
    return None


def weights_file(name: str, pretrained_file: str) -> str:
    """Where ``name``'s pretrained weights are read from: ``pretrained_file``, else (a timm name) timm's cache; a
    ``ValueError`` that says what to do where neither has them."""
    if pretrained_file:
        if not os.path.isfile(pretrained_file):
            raise ValueError(f"pretrained_file {pretrained_file!r} is not a file")
        return pretrained_file
    timm_name = ":" not in name and is_timm_model(name)
    found = cached_timm_weights(name) if timm_name else None
    if found:
        return found
    where = "timm's local cache has no weights for it" if timm_name else "only timm names have a cache to read"
    raise ValueError(
        f"pretrained: model {name!r}: {where}, and weights are never downloaded in a trial; give "
        "pretrained_file (a .pth/.safetensors state dict), or fill the cache once beforehand "
        f"(timm.create_model({name.partition(':')[0]!r}, pretrained=True) where the network is reachable)"
    )


def build_timm(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    cifar_stem: bool = False,
    act: str = "native",
    dropout: float = 0.0,
    pretrained: bool = False,
    pretrained_file: str = "",
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    import timm  # imported when a timm model is built: a trial on an in-house model never pays for it

    weights = {}
    if pretrained:
        weights = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights_file(name, pretrained_file)}}
    try:
        model = timm.create_model(
            name, num_classes=num_classes, in_chans=in_chans, drop_rate=dropout, **weights, **(model_args or {})
        )
    except TypeError as err:  # a keyword the architecture does not take
        raise ValueError(f"model {name!r} (timm): {err}; check model_args") from None
    if cifar_stem:
        apply_cifar_stem(model, name)
    return set_activation(model, act)


def _timm_factory(name: str):
    def build(
        num_classes: int,
        in_chans: int = 3,
        cifar_stem: bool = False,
        act: str = "native",
        dropout: float = 0.0,
        pretrained: bool = False,
        pretrained_file: str = "",
    ):
        return build_timm(name, num_classes, in_chans, cifar_stem, act, dropout, pretrained, pretrained_file)

    build.__name__ = name
    return build


for _name in TIMM_MODELS:
    register_model(_name)(_timm_factory(_name))


# ---- import paths --------------------------------------------------------------------------------------------------


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The callable ``package.module:factory`` names; a ``ValueError`` naming a missing module or attribute."""
    factory = import_object(path, "model")
    if not callable(factory):
        raise ValueError(
            f"model {path!r}: {path.partition(':')[2]!r} is a {type(factory).__name__}, not a callable "
            "that builds a model"
        )
    return factory


def _accepts(factory: Callable, keyword: str, via_kwargs: bool = False) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return via_kwargs
    return keyword in params or via_kwargs and any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_imported(
    path: str,
    num_classes: int,
    in_chans: int = 3,
    cifar_stem: bool = False,
    act: str = "native",
    dropout: float = 0.0,
    pretrained: bool = False,
    pretrained_file: str = "",
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """``factory(num_classes=…, [in_chans=…,] [dropout=… | drop_rate=…,] **model_args)``; where the factory takes no
    ``in_chans``, its first convolution is rebuilt for ``in_chans`` input channels."""
    factory = import_factory(path)
    kwargs = {"num_classes": num_classes, **(model_args or {})}
    if _accepts(factory, "in_chans"):
        kwargs["in_chans"] = in_chans
    if dropout:
        keyword = next((k for k in ("dropout", "drop_rate") if _accepts(factory, k)), None)
        if keyword is None:
            raise ValueError(
                f"model {path!r} takes no dropout or drop_rate argument; leave dropout at 0 (or give "
                "the factory's own keyword in model_args)"
            )
        kwargs[keyword] = dropout
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"model {path!r}: calling it with {', '.join(kwargs)} failed: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {path!r} returned a {type(model).__name__}, not an nn.Module")
    if "in_chans" not in kwargs and in_chans != 3:
        _first_conv_for(model, in_chans, path)
    if pretrained:
        load_weights(model, path, pretrained_file)
    if cifar_stem:
        apply_cifar_stem(model, path)
    return set_activation(model, act)


def _first_conv_for(model: nn.Module, in_chans: int, name: str) -> None:
    path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ValueError(f"model {name!r} has no Conv2d to take {in_chans} input channels and no in_chans argument")
    if conv.in_channels == in_chans:
        return
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
    )
    setattr(parent, path.rpartition(".")[2], new)


def load_weights(model: nn.Module, name: str, pretrained_file: str) -> None:
    """``pretrained_file``'s state dict into ``model``; entries whose shape differs (a head for other classes) stay
    initialised. A file that matches none of the model's parameters is an error."""
    path = weights_file(name, pretrained_file)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fitting:
        raise ValueError(
            f"pretrained_file {path!r}: none of its {len(state)} entries matches a parameter of model {name!r}"
        )
    model.load_state_dict(fitting, strict=False)


@register_model("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0(
    num_classes: int, in_chans: int = 3, cifar_stem: bool = False, act: str = "native", dropout: float = 0.0
):
    import torchvision

    model = torchvision.models.shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    if in_chans != 3:
        first = model.conv1[0]
        model.conv1[0] = nn.Conv2d(in_chans, first.out_channels, 3, stride=first.stride, padding=1, bias=False)
    if cifar_stem:
        apply_cifar_stem(model)
    if dropout > 0:  # torchvision's head has no dropout: put it where timm's heads have it, before the classifier
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return set_activation(model, act)
