"""An insertion policy as one value: which activation sites of a model get the inserted activation (DESIGN.md §3).

A trial config gives a policy in flat fields (``policy`` with its argument in ``mask`` / ``stages`` / ``k`` /
``paths``), the CLI and the tests as ``kind:arg`` (``mask:0101``, ``stages:1,3``, ``last_k:4``); both become a
``Policy`` (``from_config``, ``parse``), whose rules are stated here once, and ``str()`` gives the ``kind:arg`` form.

    Policy.parse("stages:1,3").select(list_sites(model))   # the sites of stages 1 and 3, in forward order
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Mapping

from trainables.errors import ConfigError

KINDS = ("none", "all", "downsampling", "stages", "first_k", "last_k", "mask", "paths")
ARGUMENT_KEY = {"mask": "mask", "stages": "stages", "first_k": "k", "last_k": "k", "paths": "paths"}  # kind -> its key
ARGUMENT_KEYS = tuple(dict.fromkeys(ARGUMENT_KEY.values()))  # the trial config keys a policy's argument goes in
CONFIG_KEYS = ("policy", *ARGUMENT_KEYS)  # every trial config key that says where the activation goes
_STAGES = re.compile(r"\d+(,\d+)*")

# What each argument must be, as the two forms say it: a trial config's field (ConfigError naming the key) ...
_FIELD_NEEDS = {
    "mask": "policy 'mask' needs a string of 0 and 1, one per activation site; got {value!r}",
    "stages": "policy 'stages' needs comma-separated stage numbers, e.g. '1,3'; got {value!r}",
    "k": "policy {kind!r} needs a count of sites; got {value!r}",
    "paths": "policy 'paths' needs comma-separated globs over module paths, e.g. 'stages.*'",
}
# ... and the ``kind:arg`` form (ValueError quoting it as given)
_SPEC_NEEDS = {
    None: "policy {kind!r} takes no argument, got {spec!r}",  # none, all, downsampling
    "mask": "policy 'mask' needs a string of 0/1, one per site, e.g. mask:0101; got {spec!r}",
    "stages": "policy 'stages' needs comma-separated stage numbers, e.g. stages:1,3; got {spec!r}",
    "k": "policy {kind!r} needs a count, e.g. {kind}:2; got {spec!r}",
    "paths": "policy 'paths' needs comma-separated globs, e.g. paths:stages.*; got {spec!r}",
}


def _normal(kind: str, arg: str) -> str:
    """The argument as the policy keeps it: a stage list without spaces (``1, 3`` is ``1,3``)."""
    return arg.replace(" ", "") if kind == "stages" else arg


def _argument_fits(kind: str, arg: str) -> bool:
    """The rule for each kind's argument (``arg`` as ``_normal`` gives it)."""
    if kind in ("first_k", "last_k"):
        return arg.isdigit()
    if kind == "stages":
        return _STAGES.fullmatch(arg) is not None
    if kind == "mask":
        return bool(arg) and not set(arg) - {"0", "1"}
    if kind == "paths":
        return bool(arg.strip())
    return not arg  # none, all, downsampling take none


@dataclass(frozen=True)
class Policy:
    kind: str  # one of KINDS
    arg: str = ""  # the mask, stage list, count or globs; "" for none, all, downsampling

    def __post_init__(self) -> None:
        object.__setattr__(self, "arg", _normal(self.kind, self.arg))
        _refuse_spec(self.kind, self.arg, str(self))

    @classmethod
    def parse(cls, spec: str) -> "Policy":
        """``"mask:0101"`` → ``Policy("mask", "0101")``, ``"all"`` → ``Policy("all")``; errors quote ``spec``."""
        kind, _, arg = spec.partition(":")
        _refuse_spec(kind, _normal(kind, arg), spec)
        return cls(kind, arg)

    @classmethod
    def from_config(cls, fields: Any) -> "Policy":
        """The policy of a trial config, or of a mapping with its keys (``policy`` and the one its kind takes); a bad
        value is a ``ConfigError`` naming its key."""
        get = fields.get if isinstance(fields, Mapping) else lambda key, default=None: getattr(fields, key, default)
        kind = get("policy")
        if kind not in KINDS:
            raise ConfigError(
                "policy",
                f"unknown policy {kind!r}; valid choices: {', '.join(KINDS)} (an argument goes in its own key: "
                f"{', '.join(sorted(set(ARGUMENT_KEY.values())))}, e.g. policy: stages with stages: '1,3')",
            )
        key = ARGUMENT_KEY.get(kind)
        if key is None:
            return cls(kind)
        value = get(key, "")
        if not _argument_fits(kind, _normal(kind, str(value))):
            raise ConfigError(key, _FIELD_NEEDS[key].format(kind=kind, value=value))
        return cls(kind, str(value))

    def __str__(self) -> str:
        """The ``kind:arg`` form (``mask:0101``, ``downsampling``)."""
        return f"{self.kind}:{self.arg}" if self.kind in ARGUMENT_KEY else self.kind

    def select(self, sites: list) -> list:
        """The sites (``insertion.Site``, forward order) this policy selects, in forward order; a ValueError where it
        does not fit them (a mask of another length, stages or a count the model lacks, globs that match nothing)."""
        kind, arg = self.kind, self.arg
        if kind == "none":
            return []
        if kind == "all":
            return list(sites)
        if kind == "downsampling":
            return [s for s in sites if s.downsampling]
        if kind == "stages":
            wanted = {int(s) for s in arg.split(",")}
            present = sorted({s.stage for s in sites})
            if wanted - set(present):
                raise ValueError(
                    f"policy {str(self)!r} names stage(s) {sorted(wanted - set(present))}; "
                    f"this model's stages are {present}"
                )
            return [s for s in sites if s.stage in wanted]
        if kind in ("first_k", "last_k"):
            k = int(arg)
            if k > len(sites):
                raise ValueError(f"policy {str(self)!r} asks for {k} sites; the model has {len(sites)}")
            return sites[:k] if kind == "first_k" else sites[len(sites) - k :]
        if kind == "mask":
            if len(arg) != len(sites):
                raise ValueError(f"mask {arg!r} has {len(arg)} bits but the model has {len(sites)} activation sites")
            return [s for s, bit in zip(sites, arg) if bit == "1"]
        globs = [g.strip() for g in arg.split(",") if g.strip()]
        selected = [s for s in sites if any(fnmatch.fnmatchcase(s.path, g) for g in globs)]
        if not selected:  # a typo would otherwise train the network without any insertion
            shown = ", ".join(s.path for s in sites[:6]) + (", …" if len(sites) > 6 else "")
            raise ValueError(f"policy {str(self)!r} matches none of the model's {len(sites)} sites (paths: {shown})")
        return selected


def _refuse_spec(kind: str, arg: str, spec: str) -> None:
    """A ValueError quoting ``spec`` unless ``kind`` is a policy and ``arg`` fits it."""
    if kind not in KINDS:
        raise ValueError(f"unknown insertion policy {spec!r}; valid kinds: {', '.join(KINDS)}")
    if not _argument_fits(kind, arg):
        raise ValueError(_SPEC_NEEDS[ARGUMENT_KEY.get(kind)].format(kind=kind, spec=spec))
