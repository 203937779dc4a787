"""Warnings for a valid sweep file whose values do nothing (DESIGN.md §6). ``validate`` and ``run`` print them, and
the sweep runs as written:

- no trial inserts anything (LSLU with n = 0 under a policy that selects sites): every trial trains the base network;
- the space has nothing to vary (empty, or one value per key) and num_samples > 1: one config trained again and again;
- a policy that selects none of the fixed model's sites (``policy: mask, mask: '0000'``).

Each warning is ``"key.path: what does nothing"``, as errors name their key.
"""

from __future__ import annotations

import dataclasses

from trainables.activations import needs_spatial_map
from trainables.config import TrialConfig
from trainables.policy import ARGUMENT_KEY, CONFIG_KEYS, Policy


def config_warnings(sweep) -> list[str]:
    """The warnings of ``sweep`` (a checked ``schema.Sweep``)."""
    if sweep.spec.search.strategy == "oneshot":  # its own checks refuse what would do nothing
        return []
    return [*_inserts_nothing(sweep), *_one_config(sweep), *_selects_no_site(sweep)]


def warning_lines(sweep) -> list[str]:
    """``warning: FILE: key: …``, a line for each of ``sweep.warnings``: what validate and run_sweep say."""
    return [f"warning: {sweep.file}: {warning}" for warning in sweep.warnings]


def _configs(sweep) -> list[TrialConfig]:
    """The fixed config and, for each searched key, the config at each of its edges (as ``check_space`` checks)."""
    spec = sweep.spec
    return [sweep.base] + [
        TrialConfig.from_flat(spec.trial_values({key: value}))
        for key, dist in spec.space.items()
        if dist.type != "sites"
        for value in dist.edges().values()
    ]


def _inserts_nothing(sweep) -> list[str]:
    configs = _configs(sweep)
    if any(cfg.inserts for cfg in configs) or all(cfg.policy == "none" for cfg in configs):
        return []  # something is inserted, or nothing was asked for (a baseline)
    base, spec = sweep.base, sweep.spec
    if base.insert_act == "lslu":
        key = "trial.n" if "n" in spec.trial or "n" not in spec.space else "space.n"
        return [
            f"{key}: LSLU with n = 0 is no LSLU: policy {base.policy} selects sites, but each keeps {base.act} and "
            "nothing learnable is inserted, so every trial trains the base network; set n >= 1 (or search it), "
            "or policy: none for a baseline"
        ]
    return [
        f"trial.insert_act: {base.insert_act!r} with these values inserts nothing at the sites policy {base.policy} "
        "selects, so every trial trains the base network"
    ]


def _one_config(sweep) -> list[str]:
    spec = sweep.spec
    n = spec.search.num_samples
    single = all(
        (d.type == "categorical" and len(d.choices) == 1) or (d.type in ("int", "float") and d.low == d.high)
        for d in spec.space.values()
    )
    if n <= 1 or not single:
        return []
    what = "empty" if not spec.space else "one value per searched key"
    return [
        f"space: {what}, so the {n} trials are one config trained {n} times (same seed); search a key with "
        "several values, or set search.num_samples: 1"
    ]


def _selects_no_site(sweep) -> list[str]:
    """A fixed policy, or a searched policy's choice, that selects no site of the (fixed) model it inserts into."""
    spec, base = sweep.spec, sweep.base
    if "model" in spec.space or "mask" in spec.space:
        return []
    candidates = []
    if not any(k in spec.space for k in CONFIG_KEYS):
        argument = ARGUMENT_KEY.get(base.policy)
        candidates.append((f"trial.{argument}" if argument in spec.trial else "trial.policy", base))
    policy = spec.space.get("policy")
    for i, choice in enumerate(policy.choices if getattr(policy, "type", None) == "categorical" else []):
        if ARGUMENT_KEY.get(choice) not in spec.space:  # a searched argument: its choices differ per trial
            cfg = TrialConfig.from_flat(spec.trial_values({"policy": choice}))
            candidates.append((f"space.policy.choices[{i}]", cfg))
    acts = getattr(spec.space.get("insert_act"), "choices", [base.insert_act])  # each activation the sweep inserts
    inserting = []  # (where, the configs with an activation that inserts)
    for where, cfg in candidates:
        cfgs = [c for c in (dataclasses.replace(cfg, insert_act=a) for a in acts) if c.inserts]
        if any(c.policy == "all" and not needs_spatial_map(c.insert_act) for c in cfgs):
            continue  # every site: no trace needed to know it selects some
        if cfgs:
            inserting.append((where, cfgs))
    if not inserting:
        return []
    from search_spaces.model_checks import model_sites

    try:
        sites = sweep.model_sites or model_sites(base)
    except (RuntimeError, TypeError, ValueError):  # a network the meta device cannot trace: no warning, the trial says
        return []
    return [
        f"{where}: policy {cfgs[0].policy_spec} selects none of the {len(sites)} sites of {base.model}: nothing is "
        "inserted, so the trial trains the base network"
        for where, cfgs in inserting
        if not any(_selects(sites, cfg) for cfg in cfgs)
    ]


def _selects(sites: list, cfg: TrialConfig) -> bool:
    """Whether ``cfg``'s policy puts its activation at any site (one it refuses counts: ``check_policies`` says so)."""
    from trainables.insertion import sites_for

    try:
        return bool(sites_for(sites, Policy.from_config(cfg), cfg.insert_act))
    except ValueError:
        return True
