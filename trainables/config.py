"""The flat, validated configuration of one trial (DESIGN.md §4).

Ray Tune hands a trial a flat dict: the sweep file's fixed ``trial`` values merged with the values the
searcher picked. ``TrialConfig.from_flat`` validates it before any work starts: unknown keys, wrong
types and names outside the registries are ``ConfigError``s that name the key.

A searched insertion mask arrives as one key per site, ``site_0 … site_{k-1}`` (0/1, DESIGN.md §6);
``from_flat`` folds them into ``policy="mask"`` and ``mask="0101…"``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from trainables.activations import is_registered_act, list_acts
from trainables.activations.lslu import BASES
from trainables.data import DATASETS
from trainables.insertion import POLICY_KINDS
from trainables.models import is_registered_model, list_models

SITE_KEY = re.compile(r"^site_(\d+)$")
UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


class ConfigError(ValueError):
    """A bad trial config value; ``key`` is the offending key (dotted for nested sections)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class TrialConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")

    # what is trained
    model: str = "digits_cnn"  # a name from trainables.models.list_models()
    dataset: Literal["digits"] = "digits"  # where the images come from
    image_size: Annotated[int, Field(ge=8, le=1024)] = 16  # side of the (square) input images
    # activations
    act: str = "relu"  # the network's own activation at every site; also LSLU's base f
    insert_act: str = "lslu"  # what the insertion policy puts at the selected sites
    n: Annotated[int, Field(ge=0, le=16)] = 3  # LSLU series length; 0 = no LSLU, sites keep `act`
    granularity: Literal["layer", "channel"] = "layer"  # LSLU θ/ω and PWLU's parameters per layer or per channel
    pwlu_intervals: Annotated[int, Field(ge=1, le=256)] = 16  # PWLU: intervals N on [B_L, B_R] (papers/003 recommend 8-16)
    pwlu_warmup_epochs: Annotated[int, Field(ge=1)] = 5  # PWLU: epochs of phase I (ReLU, collecting input statistics) before realign()
    la_alpha: Annotated[float, Field(gt=0.0)] = 1e-5  # LayerAct: α in sqrt(σ² + α) (papers/004: 1e-5 CIFAR, 0.1 ImageNet)
    # where the inserted activation goes (trainables.insertion)
    policy: str = "all"  # one of none, all, first_k, last_k, mask, paths
    mask: str = ""  # policy=mask: one 0/1 per site in forward order
    k: Annotated[int, Field(ge=0)] = 0  # policy=first_k / last_k: how many sites
    paths: str = ""  # policy=paths: comma-separated globs over module paths
    # regularization
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # dropout before the classifier
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # cross-entropy label smoothing
    # optimization
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0)] = 3e-3  # peak learning rate, reached after warm-up
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only (nesterov)
    epochs: Annotated[int, Field(ge=1)] = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 1  # linear warm-up, then cosine decay to 0
    batch_size: Annotated[int, Field(ge=1)] = 64
    # execution
    seed: int = 0  # model init and batch order
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the trial was given a GPU

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "TrialConfig":
        values = _fold_site_keys(dict(flat))
        try:
            cfg = TypeAdapter(cls).validate_python(values)
        except ValidationError as exc:
            err = first_error(exc)
            key = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(key, _pydantic_message(err)) from None
        cfg.check()
        return cfg

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def check(self) -> None:
        """Checks that span fields or registries (types and ranges are checked by pydantic)."""
        if not is_registered_model(self.model):
            raise ConfigError("model", f"unknown model {self.model!r}; valid choices: {', '.join(list_models())}")
        if not is_registered_act(self.act):
            raise ConfigError("act", f"unknown activation {self.act!r}; valid choices: {', '.join(list_acts())}")
        if not is_registered_act(self.insert_act):
            raise ConfigError("insert_act", f"unknown activation {self.insert_act!r}; valid choices: {', '.join(list_acts())}")
        if self.insert_act == "lslu" and self.n > 0 and self.act not in BASES:
            raise ConfigError("act", f"LSLU's base must be one of {', '.join(BASES)}, got {self.act!r}")
        if self.policy not in POLICY_KINDS:
            raise ConfigError("policy", f"unknown policy {self.policy!r}; valid choices: {', '.join(POLICY_KINDS)} (arguments go in mask / k / paths)")
        if self.policy == "mask" and (not self.mask or set(self.mask) - {"0", "1"}):
            raise ConfigError("mask", f"policy 'mask' needs a string of 0 and 1, one per activation site; got {self.mask!r}")
        if self.policy == "paths" and not self.paths.strip():
            raise ConfigError("paths", "policy 'paths' needs comma-separated globs over module paths, e.g. 'stages.*'")
        uses_pwlu = self.act == "pwlu" or (self.inserts and self.insert_act == "pwlu")
        if uses_pwlu and self.pwlu_warmup_epochs >= self.epochs:
            raise ConfigError("pwlu_warmup_epochs", f"must be below epochs ({self.epochs}), or PWLU never leaves its ReLU phase; "
                                                    f"got {self.pwlu_warmup_epochs}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError("warmup_epochs", f"must not exceed epochs ({self.epochs}), got {self.warmup_epochs}")

    @property
    def policy_spec(self) -> str:
        """The policy in ``trainables.insertion`` form, e.g. ``mask:0101``."""
        arg = {"mask": self.mask, "first_k": str(self.k), "last_k": str(self.k), "paths": self.paths}.get(self.policy)
        return f"{self.policy}:{arg}" if arg is not None else self.policy

    @property
    def inserts(self) -> bool:
        """Whether any site gets the inserted activation (n = 0 means plain LSLU-free baseline)."""
        return self.policy != "none" and not (self.insert_act == "lslu" and self.n == 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fold_site_keys(values: dict[str, Any]) -> dict[str, Any]:
    bits = {int(m.group(1)): values.pop(key) for key in list(values) if (m := SITE_KEY.match(key))}
    if not bits:
        return values
    if sorted(bits) != list(range(len(bits))):
        raise ConfigError("site_*", f"site keys must be site_0 … site_{len(bits) - 1} without gaps, got indices {sorted(bits)}")
    for i, bit in bits.items():
        if bit not in (0, 1, True, False, "0", "1"):
            raise ConfigError(f"site_{i}", f"expected 0 or 1, got {bit!r}")
    if values.get("policy", "mask") != "mask":
        raise ConfigError("policy", f"site_* keys define a mask, but policy is {values['policy']!r}")
    values["policy"] = "mask"
    values["mask"] = "".join(str(int(bits[i])) for i in range(len(bits)))
    return values


def first_error(exc: ValidationError) -> dict:
    """The error to report: an unknown key first, since a typo there usually explains the rest."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] in UNKNOWN_KEY_ERRORS), errors[0])


def _pydantic_message(err: dict) -> str:
    if err["type"] in UNKNOWN_KEY_ERRORS:
        return f"unknown key; valid keys: {', '.join(TrialConfig.field_names())}"
    got = err.get("input")
    return f"{err['msg']} (got {got!r})"
