"""The checks of a sweep file that need the trial's network: the model's sites (a searched mask's length), a policy
that must fit the fixed model, and forward multiply–accumulates (what the smoke test sizes itself by).

Each builds the network through ``trial_network``, on the meta device: the module graph and its shapes, no weights
allocated or initialised, so a check of ResNet-50 or VanillaNet takes milliseconds and no memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from search_spaces.schema import SpecError, SweepSpec
from trainables.activations import needs_spatial_map
from trainables.config import ConfigError, TrialConfig
from trainables.policy import ARGUMENT_KEY, ARGUMENT_KEYS, CONFIG_KEYS, Policy


@contextlib.contextmanager
def trial_network(cfg: TrialConfig) -> Iterator:
    """The trial's network before insertion (policy none) on the meta device. What runs on it runs inside the
    context, so that the tensors it makes (a counted forward pass) are meta tensors too."""
    import torch

    from trainables.loop import build_network

    with torch.device("meta"):
        model, _ = build_network(dataclasses.replace(cfg, policy="none"), num_classes=10, in_chans=3)
        yield model


def model_sites(base: TrialConfig) -> list:
    """The activation sites of the fixed model (``insertion.Site``, forward order)."""
    from trainables.insertion import list_sites

    with trial_network(base) as model:
        return list_sites(model)


def forward_macs(cfg: TrialConfig, size: int) -> float | None:
    """G multiply–accumulates of one image at ``size``² (counted on the meta device), or None if the model cannot
    take it."""
    from trainables.models.stats import count_macs

    with trial_network(cfg) as model:
        try:
            return count_macs(model.eval(), (3, size, size))
        except (RuntimeError, ValueError):  # a feature map shrank below 1×1
            return None


def check_policies(spec: SweepSpec, base: TrialConfig, file: str) -> list | None:
    """The fixed policy, and each searched value of a policy key, fit the (fixed) model's sites: a mask of its length,
    stages it has, paths that match a site, k within its site count, and, for an activation that needs a spatial map
    (LSLU), no ineligible site among those it selects (``insertion.sites_for``, the rule the trial applies). Otherwise
    every trial would fail on it, or a ``paths`` policy that matches nothing would train the baseline as if it were
    the insertion. Returns the fixed model's sites if it traced them (the warnings reuse them), else None."""
    if "model" in spec.space or "mask" in spec.space and spec.space["mask"].type == "sites":
        return None
    from trainables.insertion import sites_for

    sites: list = []
    fixed = ARGUMENT_KEY.get(base.policy)
    # (searched key, where, config)
    candidates = [(None, f"trial.{fixed}" if fixed in spec.trial else "trial.policy", base)]
    searched_acts = spec.space.get("insert_act")
    acts = searched_acts.choices if getattr(searched_acts, "type", None) == "categorical" else [base.insert_act]
    act = next((a for a in acts if needs_spatial_map(a)), acts[0])  # the most demanding activation the sweep inserts
    policies = spec.space["policy"].choices if getattr(spec.space.get("policy"), "type", None) == "categorical" else []
    for key in (k for k in CONFIG_KEYS if k in spec.space):
        # a searched argument goes with the searched policy that takes it, if any (e.g. stages under policy: stages)
        uses = next(({"policy": p} for p in policies if ARGUMENT_KEY.get(p) == key), {})
        for edge, value in spec.space[key].edges().items():
            try:
                candidates.append(
                    (key, f"space.{key}.{edge}", TrialConfig.from_flat(spec.trial_values({**uses, key: value})))
                )
            except ConfigError:
                continue  # not a trial value at all: check_space says so
    for searched, where, cfg in candidates:
        cfg = dataclasses.replace(cfg, insert_act=act)
        argument = ARGUMENT_KEY.get(cfg.policy)
        if not cfg.inserts or (argument in spec.space and argument != searched):
            continue  # a searched argument is checked as its own key
        if argument is None and (cfg.policy == "all" or not needs_spatial_map(cfg.insert_act)):
            continue  # fits any model (`all` puts an activation that needs a spatial map at the eligible sites only)
        sites = sites or model_sites(base)
        try:
            sites_for(sites, Policy.from_config(cfg), cfg.insert_act)
        except ValueError as exc:
            raise SpecError(file, where, f"{exc} ({base.model})") from None
    return sites or None


def point_mask(point: dict, base: TrialConfig, sites: list, file: str, where: str) -> str:
    """The mask a point's policy selects on the model's sites for the point's inserted activation
    (``insertion.sites_for``: for LSLU, ``all`` is every eligible site, and an ineligible one selected is refused)."""
    from trainables.insertion import mask_of, sites_for

    given = {k: point[k] for k in ("insert_act", *ARGUMENT_KEYS) if k in point}
    flat = {**base.to_dict(), "policy": point.get("policy", "mask"), **given}
    try:
        cfg = TrialConfig.from_flat(flat)
        return mask_of(sites, sites_for(sites, Policy.from_config(cfg), cfg.insert_act))
    except ConfigError as exc:
        raise SpecError(file, f"{where}.{exc.key}", exc.message) from None
    except ValueError as exc:  # the policy does not fit this model: name the key that carries its argument
        arg_key = ARGUMENT_KEY.get(point.get("policy", "mask"), "policy")
        raise SpecError(file, f"{where}.{arg_key if arg_key in point else 'policy'}", str(exc)) from None
