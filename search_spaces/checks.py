"""The checks of a sweep file's own values: the searched keys and their conditions, the search section, a grid's
size, the points to evaluate first (DESIGN.md §6). ``Sweep`` runs them; what needs the trial's network is asked of
``model_checks``, the metrics (and a searcher that takes them) of ``objectives``. Each problem is a ``SpecError``
naming the file and the key path.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any, Collection

from search_spaces.model_checks import model_sites, point_mask
from search_spaces.schema import FloatDist, IntDist, SitesDist, SpecError, SpecErrors, SweepSpec, when_holds
from trainables.config import ConfigError, TrialConfig
from trainables.data import DataError, check_data_source
from trainables.errors import did_you_mean
from trainables.policy import CONFIG_KEYS

GRID_LIMIT = 100_000  # grid points a sweep may enumerate
RANDOM_MAX_DRAWS = 1_000  # max_sites with random/grid: expected draws per feasible mask it tolerates
TrialChecked = tuple[dict[str, Any], list[SpecError], TrialConfig | None]  # what trial_values_checked returns


def trial_values_checked(spec: SweepSpec, file: str) -> TrialChecked:
    """The trial values without the bad ones, an error for each bad one, and the config (None if any was bad).

    ``TrialConfig.from_flat`` stops at its first error, so the key it names is dropped (its default stands in) and
    the rest tried again, at most once per key. An error that names a dropped key's default, or that comes from a
    default only (its key dropped already, or no trial key at all after an error), is a follow-on: not reported."""
    values, errors, dropped = spec.trial_values(), [], set()
    for _ in range(len(values) + 1):
        try:
            cfg = TrialConfig.from_flat(values)
            return values, errors, None if errors else cfg
        except ConfigError as exc:
            key = exc.key if exc.key in values else exc.key.partition(".")[0]
            follow_on = exc.key in dropped or any(re.search(rf"\b{re.escape(k)}\b", exc.message) for k in dropped)
            if not follow_on:
                errors.append(SpecError(file, f"trial.{exc.key}", exc.message))
            if key not in values:  # about a default or the values together: nothing left to drop
                return values, errors, None
            dropped.add(key)
            values = {k: v for k, v in values.items() if k != key}
    return values, errors, None


def check_trial(checked: TrialChecked) -> TrialConfig:
    """The trial config of the fixed values; every bad value is an error at once (``trial_values_checked``'s)."""
    _, errors, cfg = checked
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    return cfg


def check_data(spec: SweepSpec, base: TrialConfig, file: str) -> None:
    """``data_dir`` holds what the dataset reads (download off), for the fixed dataset and each searched choice of
    ``dataset`` / ``data_dir``: before Ray starts, not in each trial. Not part of parsing: a ``--smoke-test`` trains
    on digits and needs no files."""
    variants = [{}] + [
        {key: c}
        for key in ("dataset", "data_dir")
        if getattr(spec.space.get(key), "type", "") == "categorical"
        for c in spec.space[key].choices
    ]
    for values in variants:
        cfg = TrialConfig.from_flat(spec.trial_values(values)) if values else base
        where = f"space.{next(iter(values))}" if values else "trial"
        try:
            check_data_source(cfg.dataset, cfg.data_dir, cfg.download, cfg.data_args)
        except DataError as exc:
            key = "data_dir" if ":" not in cfg.dataset or cfg.data_dir else "dataset"
            raise SpecError(file, f"{where}.{key}" if not values else where, str(exc)) from None


def _fixed(spec: SweepSpec, key: str) -> bool:
    """Whether the trial section fixes ``key`` (a mapping's entry ``data_args.x`` inside its mapping, or dotted)."""
    field, dot, entry = key.partition(".")
    return key in spec.trial or bool(dot) and entry in (spec.trial.get(field) or {})


def check_space(spec: SweepSpec, checked: TrialChecked, file: str, dropped: Collection[str] = ()) -> Any:
    """Check every searched key and the edges of its range as trial values, each key's first error reported; return
    the model's sites if the mask is searched. ``checked``: ``trial_values_checked``'s good values, errors and config;
    no config: the trial values were bad (their errors said), so each edge is tried with the good ones only, an error
    that names another key (a default's verdict) is not reported, and the sites are unknown (``FAILED``).
    ``dropped``: the searched keys pydantic refused (their errors said): a condition that names one is not judged."""
    from search_spaces.errors import FAILED

    values, _, base = checked
    sites: Any = []
    errors = []
    for key, dist in spec.space.items():
        try:
            found = _check_key(spec, key, dist, base, values, file, dropped)
        except SpecError as exc:
            errors.append(exc)
            continue
        if found is not None:
            sites = found
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    return FAILED if base is None else sites


def _check_key(spec: SweepSpec, key: str, dist, base, values: dict, file: str, dropped: Collection[str]) -> list | None:
    """One searched key (see ``check_space``); the model's sites for a searched mask (None: none, or unknown)."""
    fields = set(TrialConfig.field_names())
    where = f"space.{key}"
    if not TrialConfig.is_key(key):
        raise SpecError(
            file,
            where,
            f"not a trial config key; valid keys: {', '.join(sorted(fields))} "
            "(a mapping's entry: "
            f"{', '.join(f'{m}.<key>' for m in TrialConfig.mapping_fields())}){did_you_mean(key, fields)}",
        )
    if _fixed(spec, key) and not getattr(dist, "when", None):
        raise SpecError(
            file,
            where,
            f"also fixed in trial.{key}; a key is either fixed or searched (or searched "
            f"under a `when` condition, trial.{key} being its value elsewhere)",
        )
    if isinstance(dist, SitesDist):
        if key != "mask":
            raise SpecError(file, where, "type 'sites' is only valid for the key 'mask'")
        if "model" in spec.space:
            raise SpecError(
                file, where, "searching the mask needs a fixed model (its site count fixes the mask length)"
            )
        if spec.trial.get("policy", "mask") != "mask":
            raise SpecError(
                file,
                "trial.policy",
                f"the space searches the mask, so policy must be 'mask', got {spec.trial['policy']!r}",
            )
        if "policy" in spec.space:
            raise SpecError(
                file,
                "space.policy",
                "the space searches the mask, so policy is 'mask'; search either the mask or the policy",
            )
        return None if base is None else model_sites(base)
    if isinstance(dist, (IntDist, FloatDist)):
        if dist.low > dist.high:
            raise SpecError(file, f"{where}.low", f"must not exceed high ({dist.high}), got {dist.low}")
        if dist.log and dist.low <= 0:
            raise SpecError(file, f"{where}.low", f"a log-scaled range needs low > 0, got {dist.low}")
    for edge, value in dist.edges().items():
        try:
            TrialConfig.from_flat({**values, key: value})
        except ConfigError as exc:  # the value itself, or another key it does not go with (named, fixed or default)
            if base is None and exc.key != key:
                continue
            culprit = (
                ""
                if exc.key == key
                else (f"with {key} = {value!r}, trial.{exc.key}{'' if exc.key in spec.trial else ' (its default)'}: ")
            )
            raise SpecError(file, f"{where}.{edge}", culprit + exc.message) from None
    _check_condition(spec, key, dist, file, dropped)
    return None


def _check_condition(spec: SweepSpec, key: str, dist, file: str, dropped: Collection[str]) -> None:
    """``when``: each named key is searched before this one (define-by-run order), and each value is one it can take."""
    earlier = list(spec.space)[: list(spec.space).index(key)]
    searchable = [k for k in earlier if spec.space[k].type != "sites"]
    for cond, allowed in (dist.when or {}).items():
        if cond in dropped:
            continue
        where = f"space.{key}.when.{cond}"
        if cond not in earlier or spec.space[cond].type == "sites":
            raise SpecError(
                file,
                where,
                f"a condition names a key searched before {key!r} (not the mask); "
                f"searched before it: {', '.join(searchable) or 'none'}",
            )
        for value in allowed if isinstance(allowed, list) else [allowed]:
            if not _fits(spec.space[cond], value):
                raise SpecError(file, where, f"{cond} never takes the value {value!r}; {_describe(spec.space[cond])}")


def _fits(dist, value) -> bool:
    """Whether ``value`` is one the distribution can take."""
    if dist.type == "categorical":
        return any(
            value == c and type(value) is type(c) or (isinstance(value, float) and value == c) for c in dist.choices
        )
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


def check_search(spec: SweepSpec, base: TrialConfig, file: str, site_count: int, smoke: bool) -> int:
    """Check the search section but its objectives (``objectives``); return the number of trials (a grid's size
    where the file leaves num_samples out)."""
    s = spec.search
    if s.scheduler == "asha" and "epochs" not in spec.space and s.grace_period > base.epochs:
        raise SpecError(
            file, "search.grace_period", f"must not exceed trial.epochs ({base.epochs}), got {s.grace_period}"
        )
    if s.population_size is not None and s.algorithm != "nsga2":
        raise SpecError(file, "search.population_size", f"only nsga2 has generations; the algorithm is {s.algorithm}")
    if s.max_sites is not None:
        if not site_count:
            raise SpecError(
                file, "search.max_sites", "limits a searched mask; search one with space.mask: {type: sites}"
            )
        feasible = _feasible_masks(site_count, s.max_sites) / 2**site_count
        if s.algorithm == "random" and feasible * RANDOM_MAX_DRAWS < 1:
            raise SpecError(
                file,
                "search.max_sites",
                f"random placement turns each of the {site_count} sites on with probability 1/2, so only "
                f"{feasible:.2g} of its masks have at most {s.max_sites} sites on; use tpe or nsga2 (they "
                "learn from the masks they had to reject) or raise max_sites",
            )
    if s.algorithm == "grid":
        return _check_grid(spec, site_count, file, smoke)
    return s.num_samples


def _feasible_masks(site_count: int, max_sites: int) -> int:
    return sum(math.comb(site_count, k) for k in range(min(max_sites, site_count) + 1))


def grid_values(spec: SweepSpec, site_count: int, file: str) -> dict[str, list]:
    values: dict[str, list] = {}
    for key, dist in spec.space.items():
        if dist.type == "sites":
            values.update({f"site_{i}": [0, 1] for i in range(site_count)})
        elif dist.type == "categorical":
            values[key] = list(dist.choices)
        elif dist.type == "int":
            values[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SpecError(
                file,
                f"space.{key}",
                "a grid needs every searched key categorical or int; list the float "
                "values as choices, e.g. [0.0, 0.1, 0.2]",
            )
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


def _check_grid(spec: SweepSpec, site_count: int, file: str, smoke: bool) -> int:
    """Check a grid search; return its number of trials: num_samples as given, else the grid's size."""
    s = spec.search
    values = grid_values(spec, site_count, file)
    if s.points_to_evaluate:
        raise SpecError(
            file, "search.points_to_evaluate", "a grid evaluates every point already; leave points_to_evaluate out"
        )
    combinations = math.prod(len(v) for v in values.values())
    if combinations > GRID_LIMIT:
        raise SpecError(
            file,
            "search.algorithm",
            f"the grid has {combinations} combinations (more than {GRID_LIMIT}); use tpe, nsga2 or random",
        )
    size = grid_trials(spec, values)
    dims = " × ".join(f"{k} ({len(v)})" for k, v in values.items() if k in spec.space)
    if "mask" in spec.space:
        masks = f"2^{site_count} masks" + (f" (at most {s.max_sites} sites on)" if s.max_sites else "")
        dims = " × ".join(filter(None, [dims, masks]))
    if "num_samples" not in s.model_fields_set:
        return size  # the grid's size is the budget
    if s.num_samples != size and not smoke:
        conditional = (
            " (conditional keys counted where sampled)"
            if any(getattr(d, "when", None) for d in spec.space.values())
            else ""
        )
        raise SpecError(
            file,
            "search.num_samples",
            f"the grid {dims} has {size} distinct trials{conditional}; "
            f"set num_samples to {size} or leave it out, got {s.num_samples}",
        )
    return s.num_samples


def check_points(spec: SweepSpec, base: TrialConfig | None, sites: list | None, file: str) -> list[dict[str, Any]]:
    """Each point in sweep-file terms → the values the searcher suggests first (a policy becomes ``site_<i>`` bits),
    each point's first error reported. ``base`` or ``sites`` None (bad trial values, or a mask whose sites are
    unknown): a point's policy is not turned into a mask, the rest of it is checked."""
    out, errors = [], []
    for i, point in enumerate(spec.search.points_to_evaluate):
        try:
            out.append(_check_point(spec, base, sites, point, f"search.points_to_evaluate[{i}]", file))
        except SpecError as exc:
            errors.append(exc)
    if errors:
        raise errors[0] if len(errors) == 1 else SpecErrors(errors)
    return out


def _check_point(spec: SweepSpec, base, sites, point: dict, where: str, file: str) -> dict[str, Any]:
    mask_searched = "mask" in spec.space
    params: dict[str, Any] = {}
    for key, value in point.items():
        if mask_searched and key in CONFIG_KEYS:
            continue
        if key not in spec.space:
            hint = " (a searched mask is given as policy, with k / stages / paths / mask)" if mask_searched else ""
            searched = ", ".join(spec.space) or "none"
            raise SpecError(file, f"{where}.{key}", f"not a searched key; searched: {searched}{hint}")
        if not _fits(spec.space[key], value):
            raise SpecError(
                file, f"{where}.{key}", f"{value!r} is not a value the space can take; {_describe(spec.space[key])}"
            )
        params[key] = value
    for key in params:
        when = spec.space[key].when
        if when and not when_holds(when, params):
            cond = ", ".join(f"{k} is {v}" for k, v in when.items())
            raise SpecError(
                file, f"{where}.{key}", f"{key} is searched only when {cond}; give those values in this point too"
            )
    if mask_searched and any(k in point for k in CONFIG_KEYS) and base is not None and sites is not None:
        bits = point_mask(point, base, sites, file, where)
        if spec.search.max_sites is not None and bits.count("1") > spec.search.max_sites:
            raise SpecError(
                file,
                where,
                f"its mask {bits} turns {bits.count('1')} sites on, above search.max_sites ({spec.search.max_sites})",
            )
        params.update({f"site_{j}": int(b) for j, b in enumerate(bits)})
    return params
