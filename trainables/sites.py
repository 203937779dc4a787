"""The activation sites of a model, found from one traced forward pass (DESIGN.md §3).

A *site* is one activation module the forward calls (an activation the registry builds, a ``register_site_type``
class, or one of the activations timm / torchvision build); a module called twice is one site (``calls`` says how
often). Sites inside squeeze-excitation gates, and modules inside a site, are not sites.

``trace_sites`` runs one forward pass with hooks on every module, on a meta-device copy of the model (no weights
allocated, nothing computed; a model that cannot be copied there, or whose forward reads values (``if x.sum() > 0``),
runs once on its own device, in eval mode, without gradients). The input is ``input_size`` (C, H, W) where the
caller gives it, else the model's ``lslu_input_size`` (``build_network`` sets it from the trial's image size), else
timm's ``pretrained_cfg`` input size, else 224² then 32² with the first conv's input channels (a model without a
conv takes a flat vector of its first Linear's width). Each site records the shape of its first call's input. From
those shapes:

- ``layout``: 2-D ``flat``, 3-D ``tokens`` (B, N, C), 4-D ``nchw`` or ``nhwc``. A 4-D site is ``nhwc`` when its
  nearest traced neighbour that fixes the channel dim is a Linear (channels last), ``nchw`` when it is a conv or a
  BatchNorm / GroupNorm (channels at dim 1); the neighbour is the nearest layer before the site whose output has the
  site's shape, else the nearest layer after it whose input has that shape; none: ``nchw``. ``channels`` is the size
  of the channel dim (the last one for ``nhwc``, ``tokens``).
- ``eligible``: LSLU's depthwise conv needs a spatial map, so ``nchw`` and ``nhwc`` sites are eligible, the others
  are not (``reason`` says why).
- ``stage``: the *stem* is stage 0: the sites in the model's top-level children (or top-level sites) that run before
  the first top-level child holding two or more sites. After the stem the stage starts at 1 and goes up by one at
  each resolution drop (a site whose spatial resolution (H, W) is smaller than the previous spatial site's), from
  the first site of the largest module around that site whose input has the old resolution and output the new one
  (ResNet-50's ``layer2.0.act1``, before the strided conv, is in stage 2 with the rest of ``layer2``), else from the
  site itself. That module may not hold sites of earlier stages, nor the current stage's first site where that
  site's resolution is the current stage's own: a trunk that is one ``nn.Sequential`` would swallow the current
  stage, so its strided block opens the new stage. A first site at the resolution of the sites before it (RegNet's
  ``s1.b1.conv1.act``, after the stem) goes with its module: the drop inside ``s1`` opens no new stage, and
  ``s1.b1.conv1.act`` is in stage 1 with ``s1``. Flat / token sites after the last spatial site are the head, one
  stage of its own after the last. A model that declares its stage modules (``lslu_stage_paths``) gets those
  instead: stage i holds the sites inside the i-th module, earlier sites are 0, later ones S + 1.
- ``downsampling``: the stem's last site, and where the resolution drops at site i, the last site of the smallest
  module around site i whose (N, C, H, W) output is smaller than its input (the block that downsamples, e.g. a
  ResNet ``layer2.0``), unless that module also holds sites of an earlier stage (VGG's ``features``: the trunk, not
  a block); where no block around site i downsampled, site i itself where a layer with weights between the two
  sites made the drop (a strided conv in a flat ``nn.Sequential``: it starts the block site i ends), else (a
  pooling layer between blocks) the site before the drop, unless the drop is to a 1×1 map (a global pool: the
  head). The last spatial site is downsampling too where a layer after it takes its NCHW map to a smaller one that
  is not 1×1 (VGG's last max-pool, 14² to 7²).

Activations the forward applies as functions (``F.relu(x)``, ``torch.gelu``, ``x.relu()``) outside site modules
cannot be replaced; the trace counts them (``SiteTrace.functional_calls``).
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from trainables.site_types import _SE_CLASS, FUNCTIONAL_ACTS, is_site_module


_CHANNELS_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)
_SPATIAL = ("nchw", "nhwc")


@dataclass(frozen=True)
class Site:
    path: str  # dotted module name, e.g. "layer2.0.act2"
    index: int  # position in forward order
    stage: int  # 0 = stem, then one per resolution (or declared stage module), the head last
    channels: int | None  # size of the channel dim of the tensor that flows through it
    downsampling: bool  # it ends a block that changes resolution, or it is the stem's last site
    depth_fraction: float  # index / (number of sites - 1): 0 at the first site, 1 at the last
    layout: str = "nchw"  # nchw, nhwc, tokens, flat (or other)
    eligible: bool = True  # whether an activation that needs a spatial map (LSLU) can go here
    reason: str = ""  # why not, where not eligible
    shape: tuple = field(default=(), compare=False)  # its input's shape in the traced forward (batch dim included)
    calls: int = 1  # how often the traced forward called it

    def as_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SiteTrace:
    sites: list[Site]
    functional_calls: dict[str, int]  # activation function name -> calls outside site modules
    input_size: tuple  # the (C, H, W) (or (F,)) the forward ran on

    @property
    def functional_total(self) -> int:
        return sum(self.functional_calls.values())


def within(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def list_sites(model: nn.Module, input_size: int | tuple | None = None) -> list[Site]:
    """Every activation site in forward order (SE gates excluded); see the module docstring for the rules."""
    return trace_sites(model, input_size).sites


_TRACE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError, AssertionError)


def trace_sites(model: nn.Module, input_size: int | tuple | None = None) -> SiteTrace:
    errors = []
    for size in _input_sizes(model, input_size):
        try:
            return _trace(model, size)
        except _TRACE_ERRORS as exc:
            errors.append(f"{size}: {exc}")
    raise ValueError(
        f"cannot trace the forward of {type(model).__name__} to find its activation sites "
        f"(give input_size); tried {'; '.join(errors)}"
    )


def _input_sizes(model: nn.Module, given) -> list[tuple]:
    if given is not None:
        return [(_in_chans(model), given, given) if isinstance(given, int) else tuple(given)]
    declared = getattr(model, "lslu_input_size", None)
    timm_cfg = getattr(model, "pretrained_cfg", None) or {}
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Linear):
        return [(first.in_features,)]
    if declared:  # the trial's own input: a model that cannot take it is an error, not a trace at another size
        return [tuple(declared)]
    sizes = []
    if timm_cfg.get("input_size"):
        sizes.append((_in_chans(model), *tuple(timm_cfg["input_size"])[1:]))
    return sizes + [(_in_chans(model), 224, 224), (_in_chans(model), 32, 32)]


def _in_chans(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose parameters and buffers are meta tensors (nothing copied), or None if it cannot be
    copied."""
    memo: dict = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    try:
        return copy.deepcopy(model, memo)
    except Exception:  # noqa: BLE001 - a module that refuses deepcopy is traced in place
        return None


class _CountActs(TorchFunctionMode):
    """Counts activation functions called while no site (or SE gate) module is running."""

    def __init__(self, depth: list[int]):
        super().__init__()
        self.depth, self.calls = depth, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "").rstrip("_")
        if name in FUNCTIONAL_ACTS and self.depth[0] == 0:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def _shape(value) -> tuple | None:
    if torch.is_tensor(value):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and value and torch.is_tensor(value[0]):
        return tuple(value[0].shape)
    return None


def _trace(model: nn.Module, size: tuple) -> SiteTrace:
    param = next(itertools.chain(model.parameters(), model.buffers()), None)
    traced = _meta_copy(model)
    if traced is not None:
        try:
            return _run(traced, size, torch.device("meta"))
        except _TRACE_ERRORS:  # a forward that reads values (`if x.sum() > 0`, `.item()`): traced on real tensors
            if param is not None and param.is_meta:
                raise
    flags = {m: m.training for m in model.modules()}
    try:
        return _run(model, size, param.device if param is not None else torch.device("cpu"))
    finally:
        for m, training in flags.items():
            m.training = training


def _run(model: nn.Module, size: tuple, device: torch.device) -> SiteTrace:
    paths = {}
    for path, module in model.named_modules():
        paths.setdefault(module, path)
    se = [p for m, p in paths.items() if _SE_CLASS.search(type(m).__name__)]
    site_paths = []
    for module, path in paths.items():
        if is_site_module(module) and not any(within(path, p) for p in se + site_paths if p != path):
            site_paths.append(path)
    sites, quiet = set(site_paths), set(site_paths) | set(se)
    calls: dict[str, list] = {}  # path -> [first call index, input shape, output shape, calls]
    depth, clock = [0], itertools.count()

    def pre(module, args):
        path = paths[module]
        if path in calls:
            calls[path][3] += 1
        else:
            calls[path] = [next(clock), _shape(args[0]) if args else None, None, 1]
        if path in quiet or is_site_module(module):
            depth[0] += 1

    def post(module, args, output):
        path = paths[module]
        if calls[path][2] is None:
            calls[path][2] = _shape(output)
        if path in quiet or is_site_module(module):
            depth[0] -= 1

    handles = [h for m in paths for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    counter = _CountActs(depth)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(torch.zeros(2, *size, device=device))
    finally:
        for h in handles:
            h.remove()
    ran = sorted((p for p in sites if p in calls and calls[p][1] is not None), key=lambda p: calls[p][0])
    kinds = {p: _channel_dim(m) for m, p in paths.items() if p in calls and _channel_dim(m)}
    rows = [(p, calls[p][1], _layout(p, calls, kinds), calls[p][3]) for p in ran]
    return SiteTrace(_sites(model, rows, calls), dict(counter.calls), tuple(size))


def _channel_dim(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "last"
    return "first" if isinstance(module, _CHANNELS_FIRST) else None


def _layout(path: str, calls: dict, kinds: dict) -> str:
    shape = calls[path][1]
    if len(shape) != 4:
        return {2: "flat", 3: "tokens"}.get(len(shape), "other")
    at = calls[path][0]
    before = sorted((p for p in kinds if calls[p][0] < at and calls[p][2] == shape), key=lambda p: -calls[p][0])
    after = sorted((p for p in kinds if calls[p][0] > at and calls[p][1] == shape), key=lambda p: calls[p][0])
    nearest = (before or after or [None])[0]
    return "nhwc" if nearest is not None and kinds[nearest] == "last" else "nchw"


def _resolution(shape: tuple, layout: str) -> tuple | None:
    return shape[2:4] if layout == "nchw" else shape[1:3] if layout == "nhwc" else None


def _smaller(a: tuple, b: tuple) -> bool:
    return a[0] * a[1] < b[0] * b[1]


def _sites(model: nn.Module, rows: list, calls: dict) -> list[Site]:
    order = [p for p, *_ in rows]
    res = {p: _resolution(shape, layout) for p, shape, layout, _ in rows}
    stem = _stem(model, order, calls)
    down = {stem[-1]} if stem else set()
    stages = {p: 0 for p in stem}
    stage, stage_first, previous = 1, None, None
    for i, p in enumerate(order):
        if p in stages:
            previous = p if res[p] is not None else previous
            continue
        if res[p] is not None and previous is not None and _smaller(res[p], res[previous]):
            part = _new_part(p, res[previous], res[p], calls, _kept(order[:i], stages, stage, stage_first, res))
            first = next(q for q in order if within(q, part)) if part else p
            if first != stage_first and previous not in stem:
                stage, stage_first = stage + 1, first
                stages.update({q: stage for q in order[order.index(first) : i] if q not in stem})
            block = _downsampling_block(p, calls, {q for q, k in stages.items() if k < stage})
            if block is not None:
                down.add([q for q in order if within(q, block)][-1])
            elif res[p] != (1, 1):  # a strided conv between sites starts the block that p ends; a pool ends one
                down.add(p if _learned_drop(model, calls, previous, p) else order[i - 1])
        stage_first = stage_first or p
        stages[p] = stage
        previous = p if res[p] is not None else previous
    spatial = [i for i, p in enumerate(order) if res[p] is not None]
    nchw = [p for p, _, layout, _ in rows if layout == "nchw"]
    if spatial and order[spatial[-1]] in nchw and _pooled_after(order[spatial[-1]], calls):
        down.add(order[spatial[-1]])
    for i, p in enumerate(order):  # the head: flat / token sites after the last spatial one
        if spatial and i > spatial[-1]:
            stages[p] = stage + 1
    declared = _declared_stages(model, order, calls)
    if declared:  # the model's own stages; its stem: the sites before the first of them
        stages, declared_stem = declared, [p for p in order if declared[p] == 0]
        down = (down - set(stem)) | ({declared_stem[-1]} if declared_stem else set())
    last = max(len(order) - 1, 1)
    out = []
    for i, (p, shape, layout, n) in enumerate(rows):
        channels = shape[1] if layout in ("nchw", "flat") else shape[-1] if layout in ("nhwc", "tokens") else None
        reason = "" if layout in _SPATIAL else f"no spatial map: layout {layout}"
        out.append(Site(p, i, stages[p], channels, p in down, i / last, layout, not reason, reason, shape, n))
    return out


def _top(path: str) -> str:
    return path.split(".")[0]


def _stem(model: nn.Module, order: list[str], calls: dict) -> list[str]:
    """The sites before the first top-level child (in call order) that holds two or more sites."""
    held = Counter(_top(p) for p in order)
    children = sorted((n for n, _ in model.named_children() if n in calls), key=lambda n: calls[n][0])
    first_block = next((n for n in children if held[n] >= 2), None)
    if first_block is None:
        return []
    return [p for p in order if calls[p][0] < calls[first_block][0]]


def _declared_stages(model: nn.Module, order: list[str], calls: dict) -> dict[str, int] | None:
    declared = getattr(model, "lslu_stage_paths", None)
    if not declared:
        return None
    stages = {}
    for p in order:
        inside = [i for i, prefix in enumerate(declared, start=1) if within(p, prefix)]
        first = calls.get(declared[0], [float("inf")])[0]
        stages[p] = inside[0] if inside else 0 if calls[p][0] < first else len(declared) + 1
    return stages


def _kept(before: list[str], stages: dict, stage: int, stage_first: str | None, res: dict) -> set[str]:
    """The sites (run before the drop) that a module opening the new stage may not hold: those of earlier stages,
    and the current stage's first site where its resolution is the stage's own (not the one the sites before it
    had): a module holding it would swallow the current stage (a trunk that is one nn.Sequential). A first site at
    the earlier resolution (RegNet's ``s1.b1.conv1`` after the stem) runs before the drop of the block it is in."""
    start = before.index(stage_first) if stage_first in before else len(before)
    inherited = next((res[q] for q in reversed(before[:start]) if res[q] is not None), None)
    own = {stage_first} if start < len(before) and res[stage_first] != inherited else set()
    return {q for q in before if stages.get(q, stage) < stage} | own


def _holds(prefix: str, sites: set[str]) -> bool:
    return any(within(q, prefix) for q in sites)


def _new_part(path: str, before: tuple, after: tuple, calls: dict, kept: set[str]) -> str | None:
    """The largest module around ``path`` whose (N, C, H, W) input has resolution ``before`` and output ``after``
    (the stage or block that made the drop, with its sites before the strided layer) and that holds none of the
    ``kept`` sites (a trunk that is one nn.Sequential would swallow the stages before), or None."""
    parts = path.split(".")
    for k in range(1, len(parts)):
        prefix = ".".join(parts[:k])
        if _resolutions(calls.get(prefix)) == (before, after) and not _holds(prefix, kept):
            return prefix
    return None


def _resolutions(record) -> tuple | None:
    """A traced module's input and output resolutions (H, W), where both are 4-D maps."""
    if record and record[1] and record[2] and len(record[1]) == len(record[2]) == 4:
        return record[1][2:4], record[2][2:4]
    return None


def _downsampling_block(path: str, calls: dict, earlier: set[str]) -> str | None:
    """The smallest module around ``path`` (the model itself excluded) whose 4-D output is smaller than its input,
    unless it also holds sites of an earlier stage (``earlier``): then it is the trunk, not the block that
    downsamples, and there is none."""
    parts = path.split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k])
        maps = _resolutions(calls.get(prefix))
        if maps and _smaller(maps[1], maps[0]):
            return None if _holds(prefix, earlier) else prefix
    return None


def _learned_drop(model: nn.Module, calls: dict, before: str, site: str) -> bool:
    """Whether a layer with weights (a strided conv) called between the sites ``before`` and ``site`` made the drop."""
    for path, (at, given, made, _) in calls.items():
        if calls[before][0] < at < calls[site][0] and given and made and len(given) == len(made) == 4:
            module = model.get_submodule(path)
            if _smaller(made[2:4], given[2:4]) and not list(module.children()) and list(module.parameters()):
                return True
    return False


def _pooled_after(last: str, calls: dict) -> bool:
    """Whether a module called after the NCHW site ``last`` takes its map and makes it smaller but not 1×1 (VGG's
    last max-pool before the classifier)."""
    at, shape = calls[last][0], calls[last][1]
    for record in calls.values():
        if record[0] > at and record[1] == shape and record[2] and len(record[2]) == 4:
            if _smaller(record[2][2:4], shape[2:4]) and record[2][2:4] != (1, 1):
                return True
    return False
