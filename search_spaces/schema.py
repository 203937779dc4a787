"""The sweep file: its schema and its validation (DESIGN.md §6).

A sweep file has the sections ``name``, ``trial`` (fixed trial values), ``space`` (searched values),
``search`` (searcher, objectives, budget, scheduler), ``resources`` (per trial) and ``runtime_env`` (Ray's own:
the user's code and packages on every worker; its local paths relative to the sweep file, resolved here).
``load_sweep`` validates it completely before Ray or MLflow are touched; every problem is a ``SpecError`` naming
the file, the key path and what was expected, and all of a file's are raised at once (``SpecErrors``; ``errors``
collects them). Values that do nothing are ``Sweep.warnings`` (``sweep_warnings``).

A searched key may be conditional: ``n: {type: int, low: 1, high: 4, when: {insert_act: lslu}}`` is sampled
only in trials whose (earlier searched) ``insert_act`` is ``lslu``; elsewhere it keeps its value from ``trial``
(the one place a key may be both fixed and searched) or its default.
``search.points_to_evaluate`` are given in sweep-file terms (``{policy: downsampling}`` for a mask search)
and become the searcher's own values (``site_<i>``) here, for the model at hand.

This module holds the sections' models and ``Sweep``; the checks a ``Sweep`` runs live beside it, by job:
``checks`` (the file's own values: space, search, grid, points), ``objectives`` (metrics, modes, their searcher),
``model_checks`` (those that build the trial's network: its sites, a policy that fits it, FLOPs), ``smoke``.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trainables.policy import ARGUMENT_KEYS

PRESET_DIR = Path(__file__).parent
Scalar = Union[bool, int, float, str]


class SpecError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file, self.key, self.message = file, key, message

    def __reduce__(self):  # picklable (Ray carries errors between processes): rebuilt from its own arguments
        return type(self), (self.file, self.key, self.message)


class SpecErrors(SpecError):
    """Every problem found in one sweep file (``errors``, each a ``SpecError``); its own file, key and message are the
    first's, so a caller that reads one error still can, and ``str()`` lists them all, one a line."""

    def __init__(self, errors: Sequence[SpecError]):
        self.errors = [e for err in errors for e in getattr(err, "errors", [err])]  # a nested SpecErrors: flattened
        first = self.errors[0]
        ValueError.__init__(self, "\n".join(map(str, self.errors)))
        self.file, self.key, self.message = first.file, first.key, first.message

    def __reduce__(self):
        return type(self), (self.errors,)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Searched(_Strict):
    # sampled only when every named (earlier) searched key has this value or one of these values
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None

    def edges(self) -> dict[str, Any]:
        """The values worth checking, by where they stand in the file: a range's ends, a list's choices."""
        if self.type == "categorical":
            return {f"choices[{i}]": c for i, c in enumerate(self.choices)}
        return {"low": self.low, "high": self.high}


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
    # what the searcher optimizes; a list: several objectives
    metric: Union[str, Annotated[list[str], Field(min_length=1)]] = "best_val_acc"
    # per metric; default: each metric's natural direction (accuracy max, latency min)
    mode: Union[Mode, list[Mode], None] = None
    num_samples: Annotated[int, Field(ge=1)] = 8  # trials in the sweep (grid: the grid's size, by default)
    # nsga2: trials per generation (default num_samples // 4, 4…50)
    population_size: Annotated[int, Field(ge=2)] | None = None
    max_sites: Annotated[int, Field(ge=1)] | None = None  # a searched mask turns on at most this many sites
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)  # tried first, e.g. {policy: downsampling}
    max_concurrent: Annotated[int, Field(ge=1)] = 2  # trials running at once
    scheduler: Literal["asha", "none"] = "asha"  # ASHA stops weak trials early on val_acc
    grace_period: Annotated[int, Field(ge=1)] = 1  # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0  # ASHA: keep the top 1/reduction_factor at each rung
    seed: int = 0  # the searcher's seed
    # retries of a failed trial, each from its last checkpoint; default: 3 on a cluster of several nodes (a lost node's
    # trial continues on another), 0 on the embedded local Ray (a failure there is the trial's own, retrying repeats it)
    max_failures: Annotated[int, Field(ge=0)] | None = None
    reuse_actors: bool = True  # run the next trial in a finished trial's worker: no process start-up per trial
    # blackbox: every trial trains one sampled config; oneshot: a supernet, a mask search on it, the best masks
    # retrained (DESIGN.md §6 "One-shot insertion search"; orchestrator/oneshot.py)
    strategy: Literal["blackbox", "oneshot"] = "blackbox"
    supernet_epochs: Annotated[int, Field(ge=1)] | None = None  # oneshot: epochs the supernet trains (trial.epochs)
    candidates: Annotated[int, Field(ge=1)] = 4  # oneshot: the best masks on the supernet, retrained from scratch
    eval_masks: Annotated[int, Field(ge=1)] = 2000  # oneshot: masks the search scores on the supernet


class Resources(_Strict):
    cpu: Annotated[float, Field(gt=0)] = 1.0  # CPUs per trial (also its torch threads)
    gpu: Annotated[float, Field(ge=0)] = 0.0  # GPUs per trial; fractions pack trials on one GPU


class SweepSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
    trial: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: SearchSection = Field(default_factory=SearchSection)
    resources: Resources = Field(default_factory=Resources)
    runtime_env: dict[str, Any] | None = None  # Ray's runtime_env (working_dir, py_modules, pip, env_vars, ...)

    @model_validator(mode="before")
    @classmethod
    def _categorical_shorthand(cls, data: Any) -> Any:
        """``space: {act: [relu, silu]}`` means a categorical over those choices."""
        if isinstance(data, dict) and isinstance(data.get("space"), dict):
            data = {
                **data,
                "space": {
                    k: {"type": "categorical", "choices": v} if isinstance(v, list) else v
                    for k, v in data["space"].items()
                },
            }
        return data

    def trial_values(self, values: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fixed trial values (and ``values``), a searched policy argument (mask, stages, k, paths) standing in with
        its first value: a fixed ``policy: stages`` is valid when the space searches ``stages``."""
        stand_ins = {}
        for key in ARGUMENT_KEYS:
            dist = self.space.get(key)
            if isinstance(dist, IntDist):
                stand_ins[key] = dist.low
            elif dist is not None and dist.type == "categorical":
                stand_ins[key] = dist.choices[0]
        return {**stand_ins, **self.trial, **(values or {})}


class Sweep:
    """A validated sweep file: the spec, the fixed trial values (all resolved), the model's sites when the mask
    is searched, the objectives and the points to evaluate first (as searcher values).

    ``smoke``: the ``--smoke-test`` form, which may run fewer trials than a grid has points."""

    def __init__(
        self,
        spec: SweepSpec,
        source: str,
        file: str,
        smoke: bool = False,
        overrides: tuple[str, ...] = (),
        problems=None,
    ):
        """Run the checks; raise every error they find (``SpecErrors``), with those already in ``problems``
        (``errors.Problems``: pydantic's, and the key paths they left unsure). Each check group runs unless it
        needs a failed one's result: one error does not hide another."""
        from search_spaces import checks, model_checks  # here: they check the models above, so they import this module
        from search_spaces.errors import FAILED, Problems
        from search_spaces.objectives import check_algorithm, check_objectives
        from search_spaces.sweep_warnings import config_warnings

        self.source, self.file, self.smoke = source, file, smoke
        self.overrides = overrides  # the --set KEY=VALUE items applied to the file (already in source)
        found = problems or Problems(file)
        code = [("trial",), ("runtime_env",)]  # the trial values, and the user's code they may name
        # the good trial values, an error per bad one, and the resolved TrialConfig of the fixed values (if all good)
        checked = found.run([*code, *(("space", k) for k in ARGUMENT_KEYS)], checks.trial_values_checked, spec, file)
        base = FAILED if checked is FAILED else found.run([], checks.check_trial, checked)
        traced = num_samples = FAILED
        resolved = None if base is FAILED else base  # bad trial values: space and points check what needs no config
        dropped = {u[1] for u in found.unsure if u[0] == "space" and len(u) > 1}  # a bad one hides no other key's
        reads = [*code, *(("space", k) for k in [*spec.space, *ARGUMENT_KEYS])]
        sites = found.run(reads, checks.check_space, spec, checked, file, dropped)  # the searched mask's sites
        if base is not FAILED:
            traced = found.run([*code, ("space",)], model_checks.check_policies, spec, base, file)
        objectives = found.run([("search", "metric"), ("search", "mode")], check_objectives, spec.search, file)
        found.run([("search", "algorithm"), ("search", "metric")], check_algorithm, spec.search, file)
        known = None if sites is FAILED else sites  # without a searched mask there are no sites to know
        if base is not FAILED and (known is not None or not isinstance(spec.space.get("mask"), SitesDist)):
            grid = [("space",)] if spec.search.algorithm == "grid" else []
            reads = [*code, ("search",), ("space", "epochs"), ("space", "mask"), *grid]
            num_samples = found.run(reads, checks.check_search, spec, base, file, len(known or []), smoke)
        reads = [*code, ("search", "points_to_evaluate"), ("search", "max_sites"), ("space",)]
        points = found.run(reads, checks.check_points, spec, resolved, known, file)
        self.model_sites = None if traced is FAILED else traced  # the fixed model's sites, if a check traced them
        self.base, self.sites, self.objectives, self.points = base, sites, objectives, points
        self.site_count = 0 if sites is FAILED else len(sites)
        if num_samples is not FAILED and num_samples != spec.search.num_samples:  # a grid's size is its budget: a
            # new spec, the file's is left as is
            spec = spec.model_copy(update={"search": spec.search.model_copy(update={"num_samples": num_samples})})
        self.spec = spec
        if spec.search.strategy == "oneshot" and all(r is not FAILED for r in (base, sites, objectives, num_samples)):
            from search_spaces.oneshot import check_oneshot

            found.run([], check_oneshot, self)
            search = spec.search.model_copy(update={"num_samples": spec.search.candidates})  # the trials it trains
            self.spec = spec.model_copy(update={"search": search})
        found.raise_any()
        self.warnings: list[str] = config_warnings(self)  # "key: what does nothing", for validate and run to print

    @property
    def name(self) -> str:
        return self.spec.name

    def check_data(self) -> None:
        """The data is where ``data_dir`` says (``checks.check_data``); ``validate`` and ``run`` ask this before Ray."""
        from search_spaces.checks import check_data

        check_data(self.spec, self.base, self.file)

    @property
    def metric(self) -> str:
        """The first objective: what ranks trials, picks the best config and colours the plots."""
        return self.objectives[0][0]

    @property
    def mode(self) -> str:
        return self.objectives[0][1]

    @property
    def population_size(self) -> int:
        """NSGA-II's generation size: as given, or ``default_population_size``."""
        return self.spec.search.population_size or default_population_size(self.spec.search.num_samples)

    def active_keys(self, values: dict[str, Any]) -> list[str]:
        """The searched keys a trial with these config values sampled (a conditional key only where its
        condition held)."""
        active: dict[str, Any] = {}
        for key, dist in self.spec.space.items():
            if dist.type == "sites" or when_holds(dist.when, active):
                active[key] = values.get(key)
        return list(active)

    def grid(self) -> dict[str, list]:
        """Every searched dimension's values, as Optuna's GridSampler takes them (a mask: one [0, 1] per site)."""
        from search_spaces.checks import grid_values

        return grid_values(self.spec, self.site_count, self.file)

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
        """The smoke-test form (``search_spaces/smoke.py``): same searcher and space, digits, ≤ 4 trials, ≤ 2 epochs,
        small images and fewer of them the deeper the network, a wide network narrower."""
        from search_spaces.smoke import shrink

        return shrink(self)

    def with_resources(self, cpu: float, gpu: float) -> "Sweep":
        """This sweep with other per-trial resources (a new one: this one is left as it is)."""
        new = copy.copy(self)
        resources = self.spec.resources.model_copy(update={"cpu": cpu, "gpu": gpu})
        new.spec = self.spec.model_copy(update={"resources": resources})
        return new


def list_presets() -> list[tuple[str, str]]:
    """Each preset of ``search_spaces/`` with what it runs: the first sentence of its header's description (the
    comment paragraph below its ``# lslu-sweep run …`` line)."""
    presets = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines()[1:]:
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text or header:  # the blank comment line under the command opens the description
                if not text:
                    break
                header.append(text)
        paragraph = " ".join(header)
        first = re.split(r"(?<=[.?!])\s+(?=[A-Z])", paragraph, maxsplit=1)[0]  # not at "Fig. 9"
        presets.append((path.stem, first if len(first) <= 100 else first[:99].rstrip() + "…"))
    return presets


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


def load_sweep(name_or_path: str, overrides: Sequence[str] = ()) -> Sweep:
    """The validated sweep of a file (or a preset by name), with ``--set KEY=VALUE`` overrides applied first."""
    from search_spaces.overrides import apply_overrides, blame_overrides, overridden_source  # it raises SpecError

    path = resolve_sweep_path(name_or_path)
    file = str(path)
    try:
        source = path.read_text()
        data = yaml.safe_load(source)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, "", f"cannot read the file: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(file, "", f"not valid YAML: {exc}") from None
    if overrides:
        data = apply_overrides(data, overrides, file)
        source = overridden_source(source, data, overrides)
    try:
        return parse_sweep(data, source, file, tuple(overrides))
    except SpecError as exc:
        raise blame_overrides(exc, overrides) from None


def parse_sweep(
    data: Any, source: str, file: str, overrides: tuple[str, ...] = (), base_dir: str | None = None
) -> Sweep:
    """The validated sweep; ``base_dir``: where the file's relative paths start (default: the file's folder)."""
    if not isinstance(data, dict):
        raise SpecError(
            file,
            "",
            f"expected a mapping with the sections name, trial, space, search, resources; got {type(data).__name__}",
        )
    from search_spaces.errors import validate_spec

    spec, problems = validate_spec(data, file)
    if spec is None:
        problems.raise_any()
    if spec.runtime_env:
        from search_spaces.runtime_env import importable, resolve_runtime_env

        try:
            env = resolve_runtime_env(spec.runtime_env, Path(base_dir or Path(file).parent), file)
            spec = spec.model_copy(update={"runtime_env": env})
            importable(env)  # the driver validates the user's code (a factory, a model) before Ray, as workers see it
        except SpecError as exc:
            problems.errors.append(exc)
            problems.unsure.add(("runtime_env",))  # the checks that import the user's code are skipped
    return Sweep(spec, source, file, overrides=overrides, problems=problems)


def default_population_size(num_samples: int) -> int:
    """NSGA-II's generation where the file gives none: a quarter of the budget (4…50), so several generations evolve."""
    return max(4, min(50, num_samples // 4))


def when_holds(when: dict[str, Any] | None, chosen: dict[str, Any]) -> bool:
    """Whether a conditional key is sampled, given the values chosen so far (no condition: always)."""
    if not when:
        return True
    return all(
        key in chosen and chosen[key] in (allowed if isinstance(allowed, list) else [allowed])
        for key, allowed in when.items()
    )
