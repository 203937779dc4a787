"""The learnable state of every activation in a model that reports one (``learnable_state()``, DESIGN.md §2)."""

from __future__ import annotations

from torch import nn


def learnable_act_state(model: nn.Module) -> dict[str, dict[str, float]]:
    """``{path: module.learnable_state()}`` for every module that reports its learnable state, e.g.
    ``{"layer1.0.act1": {"theta/1": 1.02, "omega/1": 0.01}}``."""
    adapters = {path for path, module in model.named_modules() if getattr(module, "is_site_adapter", False)}
    return {
        _site_path(path, adapters): module.learnable_state()
        for path, module in model.named_modules()
        if callable(getattr(module, "learnable_state", None))
    }


def _site_path(path: str, adapters: set[str]) -> str:
    """The site an activation belongs to: an adapter's ``inner`` (a permuting ``ChannelsLast``, the supernet's
    ``SiteChoice``, one inside the other) reports under the outermost adapter's path."""
    parent, _, name = path.rpartition(".")
    while name == "inner" and parent in adapters:
        path = parent
        parent, _, name = path.rpartition(".")
    return path


def start_epoch(model: nn.Module, epoch: int, epochs: int) -> list[str]:
    """Call ``on_epoch_start(epoch, epochs)`` on every module of ``model`` that has it (the model itself included);
    the paths of those that changed their state (they said True)."""
    return [
        path
        for path, module in model.named_modules()
        if callable(getattr(module, "on_epoch_start", None)) and module.on_epoch_start(epoch, epochs)
    ]
