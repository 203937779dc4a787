"""The policies that choose which activation sites (``trainables.sites``) get LSLU or another activation (DESIGN.md §3).

Policies (``trainables.policy.Policy``, or its ``kind:arg`` form): ``none``, ``all``, ``downsampling``, ``stages:1,3``,
``first_k:K``, ``last_k:K``, ``mask:0101…`` (one bit per site, forward order), ``paths:glob,glob``.

``apply_policy`` replaces the sites a policy selects, in place. An activation that needs a spatial map (LSLU, whose
class says ``needs_spatial_map``) goes only to eligible sites (``nchw``, ``nhwc``): ``all`` then means every
eligible site, and any other policy that selects an ineligible site is refused, naming it and why. At an ``nhwc``
site (channels last, as in ConvNeXt's MLP) the activation goes in through the permuting adapter ``ChannelsLast``.
"""

from __future__ import annotations

from torch import nn

from trainables.activations import ChannelsLast, create_act, needs_spatial_map
from trainables.policy import Policy
from trainables.site_types import ACTIVATION_TYPES, is_site_module, register_site_type
from trainables.sites import Site, SiteTrace, list_sites, trace_sites

__all__ = [
    "ACTIVATION_TYPES",
    "Site",
    "SiteTrace",
    "apply_policy",
    "format_site_table",
    "is_site_module",
    "list_sites",
    "mask_of",
    "register_site_type",
    "select_sites",
    "sites_for",
    "trace_sites",
]


def select_sites(sites: list[Site], policy: Policy | str) -> list[Site]:
    """The sites ``policy`` selects, in forward order (``Policy.select``; a string is parsed first)."""
    return _policy(policy).select(sites)


def _policy(policy: Policy | str) -> Policy:
    return policy if isinstance(policy, Policy) else Policy.parse(policy)


def format_site_table(sites: list[Site], mask: str, mark: str = "selected") -> str:
    """One line per site (index, path, stage, channels, downsampling, depth, layout, eligible with the reason where
    not) and a column marking the mask's sites."""
    width = max([len(s.path) for s in sites] + [4])
    lines = [
        f"{'index':>5}  {'path':<{width}}  {'stage':>5}  {'channels':>8}  {'downsampling':>12}  {'depth':>5}  "
        f"{'layout':<6}  {mark:<8}  eligible"
    ]
    for s, bit in zip(sites, mask):
        lines.append(
            f"{s.index:>5}  {s.path:<{width}}  {s.stage:>5}  {s.channels or '?':>8}  "
            f"{'yes' if s.downsampling else '':>12}  {s.depth_fraction:>5.2f}  {s.layout:<6}  "
            f"{'x' if bit == '1' else '':<8}  {'yes' if s.eligible else 'no: ' + s.reason}"
        )
    return "\n".join(lines)


def functional_note(trace: SiteTrace) -> str:
    """The line that says how many activations the forward applied as functions (they cannot be replaced)."""
    if not trace.functional_total:
        return "functional activation calls: 0"
    named = ", ".join(f"{name} {n}" for name, n in sorted(trace.functional_calls.items()))
    return f"functional activation calls: {trace.functional_total} ({named}; applied as functions, not replaceable)"


def mask_of(sites: list[Site], selected: list[Site]) -> str:
    chosen = {s.path for s in selected}
    return "".join("1" if s.path in chosen else "0" for s in sites)


def _shared_paths(model: nn.Module) -> dict[int, list[str]]:
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    return paths


def sites_for(sites: list[Site], policy: Policy | str, act: str) -> list[Site]:
    """The sites ``policy`` puts activation ``act`` at: an activation that needs a spatial map goes only to eligible
    sites (``all``: every eligible one; another policy that selects an ineligible site is a ValueError naming it)."""
    policy = _policy(policy)
    selected = select_sites(sites, policy)
    if not needs_spatial_map(act):
        return selected
    if policy.kind == "all":
        return [s for s in selected if s.eligible]
    refused = [s for s in selected if not s.eligible]
    if refused:
        named = "; ".join(f"{s.path} ({s.reason})" for s in refused[:4]) + ("; …" if len(refused) > 4 else "")
        raise ValueError(
            f"policy {str(policy)!r} puts {act!r}, which needs a spatial map, at {len(refused)} "
            f"ineligible site(s): {named}"
        )
    return selected


def apply_policy(
    model: nn.Module,
    policy: Policy | str,
    act: str = "lslu",
    input_size: int | tuple | None = None,
    sites: list[Site] | None = None,
    **act_kwargs,
) -> list[str]:
    """Replace the sites ``policy`` selects (``sites_for``) with ``create_act(act, channels=…, **act_kwargs)``, at an
    ``nhwc`` site inside the ``ChannelsLast`` adapter.

    Returns the replaced paths. A module object reachable under two paths is refused: replacing it
    under one name would silently leave the other pointing at the old activation. ``sites``: the model's sites when
    the caller has traced it already (else traced here).
    """
    sites = list_sites(model, input_size) if sites is None else sites
    selected = sites_for(sites, policy, act)
    modules = dict(model.named_modules())
    shared = _shared_paths(model)
    for site in selected:
        aliases = shared[id(modules[site.path])]
        if len(aliases) > 1:
            raise ValueError(
                f"site {site.path!r} is one module shared by paths {aliases}; give each site its own module"
            )
    for site in selected:
        parent_path, _, name = site.path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        module = create_act(act, channels=site.channels, **act_kwargs)
        setattr(parent, name, ChannelsLast(module) if site.layout == "nhwc" else module)
    return [s.path for s in selected]
