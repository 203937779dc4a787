"""The sweep file: its schema and its validation (DESIGN.md §6).

A sweep file has the sections ``name``, ``trial`` (fixed trial values), ``space`` (searched values),
``search`` (searcher, objectives, budget, scheduler) and ``resources`` (per trial). ``load_sweep`` validates
it completely before Ray or MLflow are touched; every problem is a ``SpecError`` naming the file, the
key path and what was expected.

A searched key may be conditional: ``n: {type: int, low: 1, high: 4, when: {insert_act: lslu}}`` is sampled
only in trials whose (earlier searched) ``insert_act`` is ``lslu``; elsewhere it keeps its value from ``trial``
(the one place a key may be both fixed and searched) or its default.
``search.points_to_evaluate`` are given in sweep-file terms (``{policy: downsampling}`` for a mask search)
and become the searcher's own values (``site_<i>``) here, for the model at hand.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables.config import UNKNOWN_KEY_ERRORS, ConfigError, TrialConfig, first_error
from trainables.metrics import OBJECTIVES

PRESET_DIR = Path(__file__).parent
SMOKE_TRAIN, SMOKE_VAL = 512, 256  # images a smoke test trains and validates on at most: enough to see learning
SMOKE_MIN_TRAIN = 16  # ... and at least, however deep the network
SMOKE_GMACS = 2.0  # forward multiply–accumulates (G) of one smoke epoch's training images: deep nets get fewer images
SMOKE_WIDTH = 0.25  # a wide network with a width multiplier trains at this width in a smoke test (VanillaNet's x0_25) ...
SMOKE_WIDE_GMACS = 0.02  # ... when one smoke image costs it more than this (G multiply–accumulates)
SMOKE_SIZES = (16, 32, 64)  # smoke image sides, smallest first: the first every searched model can take
GRID_LIMIT = 100_000  # grid points a sweep may enumerate
RANDOM_MAX_DRAWS = 1_000  # max_sites with random/grid: expected draws per feasible mask it tolerates
SITE_POLICY_KEYS = ("policy", "mask", "stages", "k", "paths")  # how a point names a mask, in sweep-file terms
POLICY_ARGUMENT = {"mask": "mask", "stages": "stages", "first_k": "k", "last_k": "k", "paths": "paths"}  # policy kind -> its key
ARCHITECTURE_KEYS = ("model", "cifar_stem", "width")  # searched keys that change what a smoke test must afford
Scalar = Union[bool, int, float, str]


class SpecError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file, self.key, self.message = file, key, message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Searched(_Strict):
    # sampled only when every named (earlier) searched key has this value or one of these values
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None


class IntDist(_Searched):
    type: Literal["int"]
    low: int
    high: int
    step: Annotated[int, Field(ge=1)] = 1
    log: bool = False


class FloatDist(_Searched):
    type: Literal["float"]
    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None
    log: bool = False


class CategoricalDist(_Searched):
    type: Literal["categorical"]
    choices: Annotated[list[Union[bool, int, float, str]], Field(min_length=1)]


class SitesDist(_Strict):
    """One on/off categorical per activation site of the model, named ``site_<index>`` (only for ``mask``)."""

    type: Literal["sites"]


Distribution = Annotated[Union[IntDist, FloatDist, CategoricalDist, SitesDist], Field(discriminator="type")]


Mode = Literal["max", "min"]


class SearchSection(_Strict):
    algorithm: Literal["tpe", "nsga2", "random", "grid"] = "tpe"  # Optuna's samplers (orchestrator/search.py)
    metric: Union[str, Annotated[list[str], Field(min_length=1)]] = "best_val_acc"  # what the searcher optimizes; a list: several objectives
    mode: Union[Mode, list[Mode], None] = None  # per metric; default: each metric's natural direction (accuracy max, latency min)
    num_samples: Annotated[int, Field(ge=1)] = 8  # trials in the sweep (grid: the grid's size, by default)
    population_size: Annotated[int, Field(ge=2)] | None = None  # nsga2: trials per generation (default num_samples // 4, 4…50)
    max_sites: Annotated[int, Field(ge=1)] | None = None  # a searched mask turns on at most this many sites
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)  # tried first, e.g. {policy: downsampling}
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
    """A validated sweep file: the spec, the fixed trial values (all resolved), the model's sites when the mask
    is searched, the objectives and the points to evaluate first (as searcher values).

    ``smoke``: the ``--smoke-test`` form, which may run fewer trials than a grid has points."""

    def __init__(self, spec: SweepSpec, source: str, file: str, smoke: bool = False):
        self.spec, self.source, self.file, self.smoke = spec, source, file, smoke
        self.base = _check_trial(spec, file)  # fully resolved TrialConfig of the fixed values
        self.sites = _check_space(spec, self.base, file)  # the model's sites when the mask is searched, else []
        _check_policies(spec, self.base, file)
        self.site_count = len(self.sites)
        self.objectives = _check_search(spec, self.base, file, self.site_count, smoke)
        self.points = _check_points(spec, self.base, self.sites, file)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric(self) -> str:
        """The first objective: what ranks trials, picks the best config and colours the plots."""
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]

    @property
    def population_size(self) -> int:
        """NSGA-II's generation size: as given, or a quarter of the budget (4…50), so that several generations evolve."""
        s = self.spec.search
        return s.population_size or max(4, min(50, s.num_samples // 4))

    def active_keys(self, values: dict[str, Any]) -> list[str]:
        """The searched keys a trial with these config values sampled (a conditional key only where its condition held)."""
        active: dict[str, Any] = {}
        for key, dist in self.spec.space.items():
            if dist.type == "sites" or when_holds(dist.when, active):
                active[key] = values.get(key)
        return list(active)

    def grid(self) -> dict[str, list]:
        """Every searched dimension's values, as Optuna's GridSampler takes them (a mask: one [0, 1] per site)."""
        return _grid_values(self.spec, self.site_count, self.file)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def fixed_values(self) -> dict[str, Any]:
        """The trial values every trial gets: the resolved config minus what the space searches (a conditional key's
        value here is what the trials that do not sample it keep)."""
        space = self.spec.space
        fixed = {k: v for k, v in self.base.to_dict().items() if k not in space or getattr(space[k], "when", None)}
        if "mask" in self.spec.space:
            fixed["policy"] = "mask"
        return fixed

    def shrunk(self) -> "Sweep":
        """The smoke-test form: same searcher and space, digits, ≤ 4 trials, ≤ 2 epochs (PWLU realigns after 1), small
        images (the smallest every searched model takes) and fewer of them the deeper the network; a wide network with a
        width multiplier at width 0.25 (VanillaNet at full width means gigabyte checkpoints and seconds of fusing per trial:
        the same sites and stages, narrower)."""
        data = self.spec.model_dump()
        size = _smoke_image_size(self)
        width = _smoke_width(self, size)
        train = _smoke_samples(self, size, width)
        shrink = {**({"width": width} if width else {}), "dataset": "digits", "image_size": size, "epochs": min(self.base.epochs, 2),
                  "warmup_epochs": min(self.base.warmup_epochs, 1), "pwlu_warmup_epochs": min(self.base.pwlu_warmup_epochs, 1),
                  "train_samples": train, "val_samples": min(SMOKE_VAL, train // 2)}
        data["trial"] = {**data["trial"], **{k: v for k, v in shrink.items() if k not in self.spec.space}}
        data["search"]["num_samples"] = min(self.spec.search.num_samples, 4)
        data["search"]["grace_period"] = 1
        return Sweep(SweepSpec.model_validate(data), self.source, self.file, smoke=True)


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
        section = {(): SweepSpec, ("search",): SearchSection, ("resources",): Resources}.get(tuple(loc[:-1]))
        valid = f"; valid keys: {', '.join(section.model_fields)}" if section else ""
        return SpecError(file, ".".join(loc), "unknown key" + valid)
    if err["type"] == "union_tag_invalid":
        return SpecError(file, ".".join(loc), "expected a distribution with type int, float, categorical or sites, or a list of choices")
    return SpecError(file, ".".join(loc), f"{err['msg']} (got {err.get('input')!r})")


def _with_stand_ins(spec: SweepSpec, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fixed trial values (and ``values``), a searched policy argument (mask, stages, k, paths) standing in with
    its first value: a fixed ``policy: stages`` is valid when the space searches ``stages``."""
    stand_ins = {}
    for key in SITE_POLICY_KEYS[1:]:
        dist = spec.space.get(key)
        if isinstance(dist, IntDist):
            stand_ins[key] = dist.low
        elif dist is not None and dist.type == "categorical":
            stand_ins[key] = dist.choices[0]
    return {**stand_ins, **spec.trial, **(values or {})}


def _check_trial(spec: SweepSpec, file: str) -> TrialConfig:
    try:
        return TrialConfig.from_flat(_with_stand_ins(spec))
    except ConfigError as exc:
        raise SpecError(file, f"trial.{exc.key}", exc.message) from None


def when_holds(when: dict[str, Any] | None, chosen: dict[str, Any]) -> bool:
    """Whether a conditional key is sampled, given the values chosen so far (no condition: always)."""
    if not when:
        return True
    return all(key in chosen and chosen[key] in (allowed if isinstance(allowed, list) else [allowed])
               for key, allowed in when.items())


def _check_space(spec: SweepSpec, base: TrialConfig, file: str) -> list:
    """Check every searched key and the edges of its range as trial values; return the model's sites if the mask is searched."""
    fields = set(TrialConfig.field_names())
    sites: list = []
    for key, dist in spec.space.items():
        where = f"space.{key}"
        if key not in fields:
            raise SpecError(file, where, f"not a trial config key; valid keys: {', '.join(sorted(fields))}")
        if key in spec.trial and not getattr(dist, "when", None):
            raise SpecError(file, where, f"also fixed in trial.{key}; a key is either fixed or searched "
                                         f"(or searched under a `when` condition, trial.{key} being its value elsewhere)")
        if isinstance(dist, SitesDist):
            if key != "mask":
                raise SpecError(file, where, "type 'sites' is only valid for the key 'mask'")
            if "model" in spec.space:
                raise SpecError(file, where, "searching the mask needs a fixed model (its site count fixes the mask length)")
            if spec.trial.get("policy", "mask") != "mask":
                raise SpecError(file, "trial.policy", f"the space searches the mask, so policy must be 'mask', got {spec.trial['policy']!r}")
            if "policy" in spec.space:
                raise SpecError(file, "space.policy", "the space searches the mask, so policy is 'mask'; search either the mask or the policy")
            sites = _model_sites(base)
            continue
        if isinstance(dist, (IntDist, FloatDist)):
            if dist.low > dist.high:
                raise SpecError(file, f"{where}.low", f"must not exceed high ({dist.high}), got {dist.low}")
            if dist.log and dist.low <= 0:
                raise SpecError(file, f"{where}.low", f"a log-scaled range needs low > 0, got {dist.low}")
        for edge, value in _edges(dist).items():
            try:
                TrialConfig.from_flat(_with_stand_ins(spec, {key: value}))
            except ConfigError as exc:  # the value itself, or another key it does not go with (named, fixed or default)
                culprit = "" if exc.key == key else (f"with {key} = {value!r}, trial.{exc.key}"
                                                     f"{'' if exc.key in spec.trial else ' (its default)'}: ")
                raise SpecError(file, f"{where}.{edge}", culprit + exc.message) from None
        _check_condition(spec, key, dist, file)
    return sites


def _edges(dist) -> dict[str, Any]:
    """The values of a searched key worth checking, by where they stand in the file: a range's ends, a list's choices."""
    if isinstance(dist, (IntDist, FloatDist)):
        return {"low": dist.low, "high": dist.high}
    return {f"choices[{i}]": c for i, c in enumerate(dist.choices)}


def _check_policies(spec: SweepSpec, base: TrialConfig, file: str) -> None:
    """The fixed policy, and each searched value of a policy key, fit the (fixed) model's sites: a mask of its length,
    stages it has, paths that match a site, k within its site count. Otherwise every trial would fail on it, or a
    ``paths`` policy that matches nothing would train the baseline as if it were the insertion."""
    if "model" in spec.space or "mask" in spec.space and spec.space["mask"].type == "sites":
        return
    sites: list = []
    fixed = POLICY_ARGUMENT.get(base.policy)
    candidates = [(None, f"trial.{fixed}" if fixed in spec.trial else "trial.policy", base)]  # (searched key, where, config)
    policies = spec.space["policy"].choices if getattr(spec.space.get("policy"), "type", None) == "categorical" else []
    for key in (k for k in SITE_POLICY_KEYS if k in spec.space):
        # a searched argument goes with the searched policy that takes it, if any (e.g. stages under policy: stages)
        uses = next(({"policy": p} for p in policies if POLICY_ARGUMENT.get(p) == key), {})
        candidates += [(key, f"space.{key}.{edge}", TrialConfig.from_flat(_with_stand_ins(spec, {**uses, key: value})))
                       for edge, value in _edges(spec.space[key]).items()]  # each value checked by _check_space
    for searched, where, cfg in candidates:
        argument = POLICY_ARGUMENT.get(cfg.policy)
        if argument is None or not cfg.inserts or (argument in spec.space and argument != searched):
            continue  # a policy without argument fits any model; a searched argument is checked as its own key
        from trainables.insertion import select_sites

        sites = sites or _model_sites(base)
        try:
            select_sites(sites, cfg.policy_spec)
        except ValueError as exc:
            raise SpecError(file, where, f"{exc} ({base.model})") from None


def _check_condition(spec: SweepSpec, key: str, dist, file: str) -> None:
    """``when``: each named key is searched before this one (define-by-run order), and each value is one it can take."""
    earlier = list(spec.space)[: list(spec.space).index(key)]
    for cond, allowed in (dist.when or {}).items():
        where = f"space.{key}.when.{cond}"
        if cond not in earlier or spec.space[cond].type == "sites":
            raise SpecError(file, where, f"a condition names a key searched before {key!r} (not the mask); "
                                         f"searched before it: {', '.join(k for k in earlier if spec.space[k].type != 'sites') or 'none'}")
        for value in allowed if isinstance(allowed, list) else [allowed]:
            if not _fits(spec.space[cond], value):
                raise SpecError(file, where, f"{cond} never takes the value {value!r}; {_describe(spec.space[cond])}")


def _fits(dist, value) -> bool:
    """Whether ``value`` is one the distribution can take."""
    if dist.type == "categorical":
        return any(value == c and type(value) is type(c) or (isinstance(value, float) and value == c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if dist.type == "int":
        return isinstance(value, int) and dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
    return dist.low <= value <= dist.high


def _describe(dist) -> str:
    if dist.type == "categorical":
        return f"its choices: {', '.join(map(str, dist.choices))}"
    step = f" in steps of {dist.step}" if dist.type == "int" and dist.step > 1 else ""
    return f"its range: {dist.type} from {dist.low} to {dist.high}{step}"


def _model_sites(base: TrialConfig) -> list:
    from trainables.insertion import list_sites
    from trainables.loop import build_network

    import torch

    with torch.device("meta"):  # only the module graph is needed: no weights allocated or initialised
        model, _ = build_network(TrialConfig(**{**base.to_dict(), "policy": "none"}), num_classes=10, in_chans=3)
    return list_sites(model)


def _check_search(spec: SweepSpec, base: TrialConfig, file: str, site_count: int, smoke: bool) -> list[tuple[str, str]]:
    """Check the search section; return the objectives as ``[(metric, mode), …]``."""
    s = spec.search
    objectives = _objectives(s, file)
    if s.scheduler == "asha" and "epochs" not in spec.space and s.grace_period > base.epochs:
        raise SpecError(file, "search.grace_period", f"must not exceed trial.epochs ({base.epochs}), got {s.grace_period}")
    if s.population_size is not None and s.algorithm != "nsga2":
        raise SpecError(file, "search.population_size", f"only nsga2 has generations; the algorithm is {s.algorithm}")
    if s.max_sites is not None:
        if not site_count:
            raise SpecError(file, "search.max_sites", "limits a searched mask; search one with space.mask: {type: sites}")
        feasible = _feasible_masks(site_count, s.max_sites) / 2 ** site_count
        if s.algorithm == "random" and feasible * RANDOM_MAX_DRAWS < 1:
            raise SpecError(file, "search.max_sites", f"random placement turns each of the {site_count} sites on with probability 1/2, "
                                                     f"so only {feasible:.2g} of its masks have at most {s.max_sites} sites on; use tpe or "
                                                     "nsga2 (they learn from the masks they had to reject) or raise max_sites")
    if s.algorithm == "grid":
        _check_grid(spec, site_count, file, smoke)
    return objectives


def _objectives(s: SearchSection, file: str) -> list[tuple[str, str]]:
    metrics = [s.metric] if isinstance(s.metric, str) else list(s.metric)
    for i, metric in enumerate(metrics):
        where = "search.metric" if isinstance(s.metric, str) else f"search.metric[{i}]"
        if metric not in OBJECTIVES:
            raise SpecError(file, where, f"unknown metric {metric!r}; valid choices: {', '.join(OBJECTIVES)}")
        if metric in metrics[:i]:
            raise SpecError(file, where, f"{metric} is already an objective")
    if s.mode is None:
        modes = [OBJECTIVES[m] for m in metrics]
    else:
        modes = [s.mode] if isinstance(s.mode, str) else list(s.mode)
        if isinstance(s.mode, str) != isinstance(s.metric, str) or len(modes) != len(metrics):
            raise SpecError(file, "search.mode", f"give one mode per metric ({len(metrics)}: {', '.join(metrics)}), "
                                                 f"or leave it out for each metric's natural direction; got {s.mode!r}")
    return list(zip(metrics, modes))


def _feasible_masks(site_count: int, max_sites: int) -> int:
    return sum(math.comb(site_count, k) for k in range(min(max_sites, site_count) + 1))


def _grid_values(spec: SweepSpec, site_count: int, file: str) -> dict[str, list]:
    values: dict[str, list] = {}
    for key, dist in spec.space.items():
        if dist.type == "sites":
            values.update({f"site_{i}": [0, 1] for i in range(site_count)})
        elif dist.type == "categorical":
            values[key] = list(dist.choices)
        elif dist.type == "int":
            values[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SpecError(file, f"space.{key}", "a grid needs every searched key categorical or int; list the float values "
                                                  "as choices, e.g. [0.0, 0.1, 0.2]")
    return values


def grid_trials(spec: SweepSpec, values: dict[str, list]) -> int:
    """Distinct trials a grid runs: the combinations, minus masks over max_sites, with a conditional key's value
    counted only where its condition holds (the grid's other combinations repeat a trial; the searcher skips them)."""
    names, max_sites = list(values), spec.search.max_sites
    distinct = set()
    for combo in itertools.product(*values.values()):
        point = dict(zip(names, combo))
        bits = tuple(v for k, v in point.items() if k not in spec.space)  # site_<i>
        if max_sites is not None and sum(bits) > max_sites:
            continue
        sampled: dict[str, Any] = {}
        for key, dist in spec.space.items():
            if dist.type != "sites" and when_holds(dist.when, sampled):
                sampled[key] = point[key]
        distinct.add((tuple(sampled.items()), bits))
    return len(distinct)


def _check_grid(spec: SweepSpec, site_count: int, file: str, smoke: bool) -> None:
    s = spec.search
    values = _grid_values(spec, site_count, file)
    if s.points_to_evaluate:
        raise SpecError(file, "search.points_to_evaluate", "a grid evaluates every point already; leave points_to_evaluate out")
    combinations = math.prod(len(v) for v in values.values())
    if combinations > GRID_LIMIT:
        raise SpecError(file, "search.algorithm", f"the grid has {combinations} combinations (more than {GRID_LIMIT}); "
                                                  "use tpe, nsga2 or random")
    size = grid_trials(spec, values)
    dims = " × ".join(f"{k} ({len(v)})" for k, v in values.items() if k in spec.space)
    if "mask" in spec.space:
        dims = " × ".join(filter(None, [dims, f"2^{site_count} masks" + (f" (at most {s.max_sites} sites on)" if s.max_sites else "")]))
    if "num_samples" not in s.model_fields_set:
        s.num_samples = size  # the grid's size is the budget
    elif s.num_samples != size and not smoke:
        conditional = " (conditional keys counted where sampled)" if any(getattr(d, "when", None) for d in spec.space.values()) else ""
        raise SpecError(file, "search.num_samples", f"the grid {dims} has {size} distinct trials{conditional}; "
                                                    f"set num_samples to {size} or leave it out, got {s.num_samples}")


def _check_points(spec: SweepSpec, base: TrialConfig, sites: list, file: str) -> list[dict[str, Any]]:
    """Each point in sweep-file terms → the values the searcher suggests first (a policy becomes ``site_<i>`` bits)."""
    out = []
    mask_searched = "mask" in spec.space
    for i, point in enumerate(spec.search.points_to_evaluate):
        where = f"search.points_to_evaluate[{i}]"
        params: dict[str, Any] = {}
        for key, value in point.items():
            if mask_searched and key in SITE_POLICY_KEYS:
                continue
            if key not in spec.space:
                hint = " (a searched mask is given as policy, with k / stages / paths / mask)" if mask_searched else ""
                raise SpecError(file, f"{where}.{key}", f"not a searched key; searched: {', '.join(spec.space) or 'none'}{hint}")
            if not _fits(spec.space[key], value):
                raise SpecError(file, f"{where}.{key}", f"{value!r} is not a value the space can take; {_describe(spec.space[key])}")
            params[key] = value
        for key in params:
            when = spec.space[key].when
            if when and not when_holds(when, params):
                cond = ", ".join(f"{k} is {v}" for k, v in when.items())
                raise SpecError(file, f"{where}.{key}", f"{key} is searched only when {cond}; give those values in this point too")
        if mask_searched and any(k in point for k in SITE_POLICY_KEYS):
            bits = _point_mask(point, base, sites, file, where)
            if spec.search.max_sites is not None and bits.count("1") > spec.search.max_sites:
                raise SpecError(file, where, f"its mask {bits} turns {bits.count('1')} sites on, above search.max_sites "
                                             f"({spec.search.max_sites})")
            params.update({f"site_{j}": int(b) for j, b in enumerate(bits)})
        out.append(params)
    return out


def _point_mask(point: dict, base: TrialConfig, sites: list, file: str, where: str) -> str:
    """The mask a point's policy selects on the model's sites."""
    from trainables.insertion import mask_of, select_sites

    flat = {**base.to_dict(), "policy": point.get("policy", "mask"), **{k: point[k] for k in SITE_POLICY_KEYS[1:] if k in point}}
    try:
        spec = TrialConfig.from_flat(flat).policy_spec
        return mask_of(sites, select_sites(sites, spec))
    except ConfigError as exc:
        raise SpecError(file, f"{where}.{exc.key}", exc.message) from None
    except ValueError as exc:  # the policy does not fit this model: name the key that carries its argument
        arg_key = POLICY_ARGUMENT.get(point.get("policy", "mask"), "policy")
        raise SpecError(file, f"{where}.{arg_key if arg_key in point else 'policy'}", str(exc)) from None


def _smoke_models(sweep: "Sweep", width: float | None = None) -> list[TrialConfig]:
    """The fixed config with every searched architecture (model, stem, width): the smoke image size and image count
    must suit all of them. A conditional key adds its fixed value too (what the trials that do not sample it keep)."""
    base, options = {**sweep.base.to_dict(), **({"width": width} if width else {})}, []
    for key in ARCHITECTURE_KEYS:
        dist = sweep.spec.space.get(key)
        if dist is None or dist.type != "categorical":
            options.append([base[key]])
        else:
            options.append(list(dict.fromkeys([*dist.choices, *([base[key]] if dist.when else [])])))
    return [TrialConfig(**{**base, **dict(zip(ARCHITECTURE_KEYS, combo)), "policy": "none"}) for combo in itertools.product(*options)]


def _smoke_image_size(sweep: "Sweep") -> int:
    """The smallest smoke size (≤ the file's own) every searched model can take (VanillaNet downsamples by 32)."""
    for size in SMOKE_SIZES:
        if size >= sweep.base.image_size or all(_forward_macs(cfg, size) is not None for cfg in _smoke_models(sweep)):
            return min(size, sweep.base.image_size)
    return sweep.base.image_size


def _smoke_width(sweep: "Sweep", size: int) -> float | None:
    """SMOKE_WIDTH where every searched architecture has a width multiplier (not searched) and the costliest takes more
    than SMOKE_WIDE_GMACS per image at the smoke size; else None (the file's width)."""
    from trainables.models import model_arguments

    models = _smoke_models(sweep)
    if "width" in sweep.spec.space or sweep.base.width <= SMOKE_WIDTH or \
            not all("width" in model_arguments(cfg.model) for cfg in models):
        return None
    return SMOKE_WIDTH if max((_forward_macs(cfg, size) or 0.0) for cfg in models) > SMOKE_WIDE_GMACS else None


def _smoke_samples(sweep: "Sweep", size: int, width: float | None = None) -> int:
    """Training images per smoke epoch: SMOKE_GMACS worth of forward passes of the costliest searched model, 16…512."""
    macs = max((_forward_macs(cfg, size) or 0.0) for cfg in _smoke_models(sweep, width))
    return int(min(SMOKE_TRAIN, max(SMOKE_MIN_TRAIN, SMOKE_GMACS / macs if macs else SMOKE_TRAIN)))


def _forward_macs(cfg: TrialConfig, size: int) -> float | None:
    """G multiply–accumulates of one image at ``size``² (counted on the meta device), or None if the model cannot take it."""
    import torch

    from trainables.loop import build_network
    from trainables.models.stats import count_macs

    with torch.device("meta"):
        model, _ = build_network(cfg, num_classes=10, in_chans=3)
        try:
            return count_macs(model.eval(), (3, size, size))
        except (RuntimeError, ValueError):  # a feature map shrank below 1×1
            return None
