"""The sweep file: its schema and its validation (DESIGN.md §6).

A sweep file has the sections ``name``, ``trial`` (fixed trial values), ``space`` (searched values),
``search`` (searcher, metric, budget, scheduler) and ``resources`` (per trial). ``load_sweep`` validates
it completely before Ray or MLflow are touched; every problem is a ``SpecError`` naming the file, the
key path and what was expected.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.config import UNKNOWN_KEY_ERRORS, ConfigError, TrialConfig, first_error
from trainables.metrics import OBJECTIVES

PRESET_DIR = Path(__file__).parent
SMOKE_TRAIN, SMOKE_VAL = 512, 256  # images a smoke test trains and validates on: enough to see learning, quick for deep nets


class SpecError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file, self.key, self.message = file, key, message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IntDist(_Strict):
    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False


class FloatDist(_Strict):
    type: Literal["float"]
    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None
    log: bool = False


class CategoricalDist(_Strict):
    type: Literal["categorical"]
    choices: Annotated[list[Union[bool, int, float, str]], Field(min_length=1)]


class SitesDist(_Strict):
    """One on/off categorical per activation site of the model, named ``site_<index>`` (only for ``mask``)."""

    type: Literal["sites"]


Distribution = Annotated[Union[IntDist, FloatDist, CategoricalDist, SitesDist], Field(discriminator="type")]


class SearchSection(_Strict):
    algorithm: Literal["tpe", "random"] = "tpe"  # Optuna's TPE or random sampler, through Ray Tune's OptunaSearch
    metric: str = "best_val_acc"  # what the searcher optimizes (a reported metric)
    mode: Literal["max", "min"] = "max"
    num_samples: Annotated[int, Field(ge=1)] = 8  # trials in the sweep
    max_concurrent: Annotated[int, Field(ge=1)] = 2  # trials running at once
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops weak trials early on val_acc
    grace_period: Annotated[int, Field(ge=1)] = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0  # ASHA: keep the top 1/reduction_factor at each rung
    seed: int = 0  # the searcher's seed
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a failed trial, each from its last checkpoint
    reuse_actors: bool = True  # run the next trial in a finished trial's worker: no process start-up per trial


class Resources(_Strict):
    cpu: Annotated[float, Field(gt=0)] = 1.0  # CPUs per trial (also its torch threads)
    gpu: Annotated[float, Field(ge=0)] = 0.0  # GPUs per trial; fractions pack trials on one GPU


class SweepSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    trial: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: SearchSection = Field(default_factory=SearchSection)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="before")
    @classmethod
    def _categorical_shorthand(cls, data: Any) -> Any:
        """``space: {act: [relu, silu]}`` means a categorical over those choices."""
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = {**data, "space": {k: {"type": "categorical", "choices": v} if isinstance(v, list) else v
                                      for k, v in data["space"].items()}}
        return data


class Sweep:
    """A validated sweep file: the spec, the fixed trial values (all resolved) and the site count."""

    def __init__(self, spec: SweepSpec, source: str, file: str):
        self.spec, self.source, self.file = spec, source, file
        self.base = _check_trial(spec, file)  # fully resolved TrialConfig of the fixed values
        self.site_count = _check_space(spec, self.base, file)
        _check_search(spec, self.base, file)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def fixed_values(self) -> dict[str, Any]:
        """The trial values every trial gets: the resolved config minus what the space searches."""
        fixed = {k: v for k, v in self.base.to_dict().items() if k not in self.spec.space}
        if "mask" in self.spec.space:
            fixed["policy"] = "mask"
        return fixed

    def shrunk(self) -> "Sweep":
        """The smoke-test form: same searcher and space, digits, ≤ 4 trials, ≤ 2 epochs (PWLU realigns after 1), small images."""
        data = self.spec.model_dump()
        shrink = {"dataset": "digits", "image_size": min(self.base.image_size, 16), "epochs": min(self.base.epochs, 2),
                  "warmup_epochs": min(self.base.warmup_epochs, 1), "pwlu_warmup_epochs": min(self.base.pwlu_warmup_epochs, 1),
                  "train_samples": SMOKE_TRAIN, "val_samples": SMOKE_VAL}
        data["trial"] = {**data["trial"], **{k: v for k, v in shrink.items() if k not in self.spec.space}}
        data["search"]["num_samples"] = min(self.spec.search.num_samples, 4)
        data["search"]["grace_period"] = 1
        return Sweep(SweepSpec.model_validate(data), self.source, self.file)


def resolve_sweep_path(name_or_path: str) -> Path:
    """A path to a sweep file, or the name of a preset in ``search_spaces/`` (``quickstart``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    preset = PRESET_DIR / (name_or_path if name_or_path.endswith(".yaml") else f"{name_or_path}.yaml")
    if preset.exists():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise SpecError(name_or_path, "", f"no such file, and no preset of that name (presets: {presets})")


def load_sweep(name_or_path: str) -> Sweep:
    path = resolve_sweep_path(name_or_path)
    file = str(path)
    try:
        source = path.read_text()
        data = yaml.safe_load(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, "", f"cannot read the file: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(file, "", f"not valid YAML: {exc}") from None
    return parse_sweep(data, source, file)


def parse_sweep(data: Any, source: str, file: str) -> Sweep:
    if not isinstance(data, dict):
        raise SpecError(file, "", f"expected a mapping with the sections name, trial, space, search, resources; got {type(data).__name__}")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(file, exc) from None
    return Sweep(spec, source, file)


def _spec_error(file: str, exc: ValidationError) -> SpecError:
    err = first_error(exc)
    loc = [str(p) for p in err["loc"] if p not in ("int", "float", "categorical", "sites")]  # drop union tags
    if err["type"] in UNKNOWN_KEY_ERRORS:
        return SpecError(file, ".".join(loc), "unknown key")
    if err["type"] == "union_tag_invalid":
        return SpecError(file, ".".join(loc), "expected a distribution with type int, float, categorical or sites, or a list of choices")
    return SpecError(file, ".".join(loc), f"{err['msg']} (got {err.get('input')!r})")


def _check_trial(spec: SweepSpec, file: str) -> TrialConfig:
    try:
        return TrialConfig.from_flat(spec.trial)
    except ConfigError as exc:
        raise SpecError(file, f"trial.{exc.key}", exc.message) from None


def _check_space(spec: SweepSpec, base: TrialConfig, file: str) -> int:
    """Check every searched key and the edges of its range as trial values; return the site count (0 if unused)."""
    fields = set(TrialConfig.field_names())
    site_count = 0
    for key, dist in spec.space.items():
        where = f"space.{key}"
        if key not in fields:
            raise SpecError(file, where, f"not a trial config key; valid keys: {', '.join(sorted(fields))}")
        if key in spec.trial:
            raise SpecError(file, where, f"also fixed in trial.{key}; a key is either fixed or searched")
        if isinstance(dist, SitesDist):
            if key != "mask":
                raise SpecError(file, where, "type 'sites' is only valid for the key 'mask'")
            if "model" in spec.space:
                raise SpecError(file, where, "searching the mask needs a fixed model (its site count fixes the mask length)")
            if spec.trial.get("policy", "mask") != "mask":
                raise SpecError(file, "trial.policy", f"the space searches the mask, so policy must be 'mask', got {spec.trial['policy']!r}")
            site_count = _count_sites(base)
            continue
        if isinstance(dist, (IntDist, FloatDist)):
            if dist.low > dist.high:
                raise SpecError(file, f"{where}.low", f"must not exceed high ({dist.high}), got {dist.low}")
            if dist.log and dist.low <= 0:
                raise SpecError(file, f"{where}.low", f"a log-scaled range needs low > 0, got {dist.low}")
            edges = {"low": dist.low, "high": dist.high}
        else:
            edges = {f"choices[{i}]": c for i, c in enumerate(dist.choices)}
        for edge, value in edges.items():
            try:
                TrialConfig.from_flat({**spec.trial, key: value})
            except ConfigError as exc:
                raise SpecError(file, f"{where}.{edge}", exc.message) from None
    return site_count


def _count_sites(base: TrialConfig) -> int:
    from trainables.insertion import list_sites
    from trainables.loop import build_network

    import torch

    with torch.device("meta"):  # only the module graph is needed: no weights allocated or initialised
        model, _ = build_network(TrialConfig(**{**base.to_dict(), "policy": "none"}), num_classes=10, in_chans=3)
    return len(list_sites(model))


def _check_search(spec: SweepSpec, base: TrialConfig, file: str) -> None:
    s = spec.search
    if s.metric not in OBJECTIVES:
        raise SpecError(file, "search.metric", f"unknown metric {s.metric!r}; valid choices: {', '.join(OBJECTIVES)}")
    if s.scheduler == "asha" and "epochs" not in spec.space and s.grace_period > base.epochs:
        raise SpecError(file, "search.grace_period", f"must not exceed trial.epochs ({base.epochs}), got {s.grace_period}")
