"""Activation sites of a model and the policies that choose where LSLU (or another activation) goes.

A *site* is one activation module of the built model (DESIGN.md §3). ``list_sites`` returns them in
forward (registration) order; ``apply_policy`` replaces the sites a policy selects, in place.

Policies: ``none``, ``all``, ``first_k:K``, ``last_k:K``, ``mask:0101…`` (one bit per site, forward
order), ``paths:glob,glob``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from trainables.activations import act_module_types, create_act

# Module types that count as activation sites: whatever the activation registry builds (so a replaced
# site stays a site), plus the activations timm / torchvision models build themselves.
ACTIVATION_TYPES: tuple[type, ...] = act_module_types() + (nn.ReLU6, nn.Hardswish, nn.PReLU, nn.ELU, nn.Mish)
# Modules whose output channel count a following activation inherits.
_CHANNEL_SOURCES = (nn.BatchNorm2d, nn.GroupNorm, nn.Conv2d)
POLICY_KINDS = ("none", "all", "first_k", "last_k", "mask", "paths")


@dataclass(frozen=True)
class Site:
    path: str  # dotted module name, e.g. "stages.0.act"
    index: int  # position in forward order
    channels: int | None  # channels of the tensor that flows through it
    depth_fraction: float  # index / (number of sites - 1): 0 at the first site, 1 at the last


def _channels_of(module: nn.Module) -> int | None:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    return None


def list_sites(model: nn.Module) -> list[Site]:
    """Every activation module in forward order, with the channel count of the norm or conv feeding it."""
    found: list[tuple[str, int | None]] = []
    channels = None
    for path, module in model.named_modules():
        if isinstance(module, _CHANNEL_SOURCES):
            channels = _channels_of(module)
        elif isinstance(module, ACTIVATION_TYPES):
            found.append((path, channels))
    last = max(len(found) - 1, 1)
    return [Site(path, i, ch, i / last) for i, (path, ch) in enumerate(found)]


def parse_policy(policy: str) -> tuple[str, str]:
    """``"mask:0101"`` → ``("mask", "0101")``; ``"all"`` → ``("all", "")``."""
    kind, _, arg = policy.partition(":")
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown insertion policy {policy!r}; valid kinds: {', '.join(POLICY_KINDS)}")
    if kind in ("none", "all") and arg:
        raise ValueError(f"policy {kind!r} takes no argument, got {policy!r}")
    if kind in ("first_k", "last_k") and not (arg.isdigit()):
        raise ValueError(f"policy {kind!r} needs a count, e.g. {kind}:2; got {policy!r}")
    if kind == "mask" and (not arg or set(arg) - {"0", "1"}):
        raise ValueError(f"policy 'mask' needs a string of 0/1, one per site, e.g. mask:0101; got {policy!r}")
    if kind == "paths" and not arg:
        raise ValueError(f"policy 'paths' needs comma-separated globs, e.g. paths:stages.*; got {policy!r}")
    return kind, arg


def select_sites(sites: list[Site], policy: str) -> list[Site]:
    """The sites ``policy`` selects, in forward order."""
    kind, arg = parse_policy(policy)
    if kind == "none":
        return []
    if kind == "all":
        return list(sites)
    if kind == "first_k":
        return sites[: int(arg)]
    if kind == "last_k":
        return sites[len(sites) - int(arg):] if int(arg) else []
    if kind == "mask":
        if len(arg) != len(sites):
            raise ValueError(f"mask {arg!r} has {len(arg)} bits but the model has {len(sites)} activation sites")
        return [s for s, bit in zip(sites, arg) if bit == "1"]
    globs = [g.strip() for g in arg.split(",") if g.strip()]
    return [s for s in sites if any(fnmatch.fnmatchcase(s.path, g) for g in globs)]


def mask_of(sites: list[Site], selected: list[Site]) -> str:
    chosen = {s.path for s in selected}
    return "".join("1" if s.path in chosen else "0" for s in sites)


def _shared_paths(model: nn.Module) -> dict[int, list[str]]:
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    return paths


def apply_policy(model: nn.Module, policy: str, act: str = "lslu", **act_kwargs) -> list[str]:
    """Replace the sites ``policy`` selects with ``create_act(act, channels=…, **act_kwargs)``.

    Returns the replaced paths. A module object reachable under two paths is refused: replacing it
    under one name would silently leave the other pointing at the old activation.
    """
    sites = list_sites(model)
    selected = select_sites(sites, policy)
    modules = dict(model.named_modules())
    shared = _shared_paths(model)
    for site in selected:
        aliases = shared[id(modules[site.path])]
        if len(aliases) > 1:
            raise ValueError(f"site {site.path!r} is one module shared by paths {aliases}; give each site its own module")
    for site in selected:
        parent_path, _, name = site.path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, create_act(act, channels=site.channels, **act_kwargs))
    return [s.path for s in selected]
