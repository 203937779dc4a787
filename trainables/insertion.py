"""Activation sites of a model and the policies that choose where LSLU (or another activation) goes (DESIGN.md §3).

A *site* is one activation module of the built model. ``list_sites`` returns them in forward
(registration) order with their stage, channel count and whether they end a resolution change;
``apply_policy`` replaces the sites a policy selects, in place.

Policies (``trainables.policy.Policy``, or its ``kind:arg`` form): ``none``, ``all``, ``downsampling``, ``stages:1,3``,
``first_k:K``, ``last_k:K``, ``mask:0101…`` (one bit per site, forward order), ``paths:glob,glob``.

Stages: the stem's sites are stage 0, the sites inside the model's i-th stage module are stage i
(ResNet ``layer1`` is stage 1, as in timm's ``feature_info``), sites after the last stage (a head) are
stage S+1. Sites inside squeeze-excitation gates are not sites: the gate is part of its block's attention.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import nn

from trainables.activations import act_module_types, create_act
from trainables.policy import Policy

# Module types that count as activation sites: whatever the activation registry builds (so a replaced
# site stays a site), plus the activations timm / torchvision models build themselves.
ACTIVATION_TYPES: tuple[type, ...] = act_module_types() + (nn.ReLU6, nn.Hardswish, nn.PReLU, nn.ELU, nn.Mish)
_EXTRA_SITE_TYPES: list[type] = []  # model-specific activations (e.g. VanillaNet's series activation)
# Modules whose output channel count a following activation inherits.
_CHANNEL_SOURCES = (nn.BatchNorm2d, nn.GroupNorm, nn.Conv2d, nn.Linear)
_SE_CLASS = re.compile(r"SqueezeExcit|^SEModule$|^EffectiveSEModule$|^SqueezeExcitation$")
_STAGE_CHILD = re.compile(r"^(layer|stage)(\d+)$")


@dataclass(frozen=True)
class Site:
    path: str  # dotted module name, e.g. "layer2.0.act2"
    index: int  # position in forward order
    stage: int  # 0 = stem, 1..S = the model's stage modules, S+1 = head
    channels: int | None  # channels of the tensor that flows through it
    downsampling: bool  # it ends a block that changes resolution, or it is the stem's last site
    depth_fraction: float  # index / (number of sites - 1): 0 at the first site, 1 at the last

    def as_row(self) -> dict:
        return asdict(self)


def register_site_type(cls: type) -> type:
    """Make a model-specific activation class a site (its module is replaced like any other activation)."""
    if cls not in _EXTRA_SITE_TYPES:
        _EXTRA_SITE_TYPES.append(cls)
    return cls


def is_site_module(module: nn.Module) -> bool:
    return isinstance(module, (*ACTIVATION_TYPES, *act_module_types(), *_EXTRA_SITE_TYPES))  # imported ones too


def stage_paths(model: nn.Module) -> list[str]:
    """The model's stage modules in order: what the model declares (``lslu_stage_paths``), timm's ``blocks.i``,
    or top-level ``layerN`` / ``stageN`` children."""
    declared = getattr(model, "lslu_stage_paths", None)
    if declared is not None:
        return list(declared)
    children = dict(model.named_children())
    if isinstance(children.get("blocks"), (nn.Sequential, nn.ModuleList)):
        return [f"blocks.{i}" for i in range(len(children["blocks"]))]
    numbered = [(int(m.group(2)), name) for name in children if (m := _STAGE_CHILD.match(name))]
    return [name for _, name in sorted(numbered)]


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _downsamples(module: nn.Module) -> bool:
    """Whether a block reduces resolution: a strided conv or pooling anywhere inside it."""
    for m in module.modules():
        stride = getattr(m, "stride", 1)
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)) and (stride if isinstance(stride, int) else max(stride)) > 1:
            return True
    return False


def _blocks(model: nn.Module, stages: list[str]) -> list[str]:
    """Block modules: the children of each container stage, or the stage itself when it is one block."""
    blocks = []
    for path in stages:
        stage = model.get_submodule(path)
        if isinstance(stage, (nn.Sequential, nn.ModuleList)):
            blocks += [f"{path}.{name}" for name, _ in stage.named_children()]
        else:
            blocks.append(path)
    return blocks


def list_sites(model: nn.Module) -> list[Site]:
    """Every activation site in forward order (SE gates excluded), with the channels of the norm or conv feeding it."""
    found: list[tuple[str, int | None]] = []
    channels, se_prefixes = None, []
    for path, module in model.named_modules():
        if _SE_CLASS.search(type(module).__name__):
            se_prefixes.append(path)
            continue
        if any(_within(path, p) for p in se_prefixes):
            continue
        if isinstance(module, _CHANNEL_SOURCES):
            channels = _channels_of(module)
        elif is_site_module(module):
            found.append((path, channels))
    stages = stage_paths(model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    def stage_of(path: str) -> int:
        for i, prefix in enumerate(stages, start=1):
            if _within(path, prefix):
                return i
        before_first = not stages or order[path] < order[stages[0]]
        return 0 if before_first else len(stages) + 1

    modules = dict(model.named_modules())
    ends_downsampling = set()
    for block in _blocks(model, stages):
        inside = [p for p, _ in found if _within(p, block)]
        if inside and _downsamples(modules[block]):
            ends_downsampling.add(inside[-1])
    stem = [p for p, _ in found if stage_of(p) == 0]
    if stem:
        ends_downsampling.add(stem[-1])
    last = max(len(found) - 1, 1)
    return [Site(p, i, stage_of(p), ch, p in ends_downsampling, i / last) for i, (p, ch) in enumerate(found)]


def _channels_of(module: nn.Module) -> int | None:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def select_sites(sites: list[Site], policy: Policy | str) -> list[Site]:
    """The sites ``policy`` selects, in forward order (``Policy.select``; a string is parsed first)."""
    return _policy(policy).select(sites)


def _policy(policy: Policy | str) -> Policy:
    return policy if isinstance(policy, Policy) else Policy.parse(policy)


def format_site_table(sites: list[Site], mask: str, mark: str = "selected") -> str:
    """One line per site (index, path, stage, channels, downsampling, depth) and a column marking the mask's sites."""
    width = max([len(s.path) for s in sites] + [4])
    lines = [f"{'index':>5}  {'path':<{width}}  {'stage':>5}  {'channels':>8}  {'downsampling':>12}  {'depth':>5}  {mark}"]
    for s, bit in zip(sites, mask):
        lines.append(f"{s.index:>5}  {s.path:<{width}}  {s.stage:>5}  {s.channels or '?':>8}  {'yes' if s.downsampling else '':>12}  "
                     f"{s.depth_fraction:>5.2f}  {'x' if bit == '1' else ''}")
    return "\n".join(lines)


def mask_of(sites: list[Site], selected: list[Site]) -> str:
    chosen = {s.path for s in selected}
    return "".join("1" if s.path in chosen else "0" for s in sites)


def _shared_paths(model: nn.Module) -> dict[int, list[str]]:
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    return paths


def apply_policy(model: nn.Module, policy: Policy | str, act: str = "lslu", **act_kwargs) -> list[str]:
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
