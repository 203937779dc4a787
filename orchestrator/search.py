"""The searcher and scheduler a sweep file asks for, built for Ray Tune.

The space is define-by-run (``OptunaSearch(space=callable)``): the callable suggests every searched key
(a conditional one only where its ``when`` holds) and returns the fixed trial values as constants, so each
trial's Tune config is its whole flat trial config.

``max_sites``: a mask with more sites on is *rejected*, never trained. The callable records the violation
as an Optuna constraint (``trial.set_constraint``, Optuna 5's replacement of ``constraints_func``; Ray's
captor passes it through), ``SweepSearch`` tells the study at once that the sample finished infeasible,
and draws again. TPE then ranks it below every feasible trial by its violation, NSGA-II by constrained
domination, so both learn to propose feasible masks. Penalising instead (training it and reporting a bad
score) would spend a trial's compute on a mask the user ruled out, and put an invented number into the
objective the sampler models.
"""
from __future__ import annotations

import math
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.schema import Sweep, when_holds

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver's console is Tune's trial table, not Optuna's notices
ASHA_METRIC = ("val_acc", "max")  # ASHA compares trials at each rung on the epoch's top-1 accuracy
MAX_SITES_CONSTRAINT = "max_sites"  # the Optuna constraint: sites on − max_sites (feasible at ≤ 0)
MAX_DRAWS = 20_000  # draws per trial before a mask within max_sites is given up on


class SpaceSampler:
    """Define-by-run space. A module-level class, not a closure: Tune pickles it with the searcher's state."""

    max_sites: int | None = None  # class default: a sampler pickled before max_sites existed still loads

    def __init__(self, space: dict[str, dict], fixed: dict[str, Any], site_count: int, max_sites: int | None = None):
        self.space, self.fixed, self.site_count, self.max_sites = space, fixed, site_count, max_sites

    def __call__(self, trial) -> dict[str, Any]:
        chosen: dict[str, Any] = {}
        for key, dist in self.space.items():
            kind = dist["type"]
            if kind != "sites" and not when_holds(dist.get("when"), chosen):
                continue  # conditional, and its condition does not hold: the trial keeps the key's default
            if kind == "int":
                chosen[key] = trial.suggest_int(key, dist["low"], dist["high"], step=dist["step"], log=dist["log"])
            elif kind == "float":
                chosen[key] = trial.suggest_float(key, dist["low"], dist["high"], step=dist["step"], log=dist["log"])
            elif kind == "categorical":
                chosen[key] = trial.suggest_categorical(key, dist["choices"])
            else:  # sites: one on/off choice per activation site
                bits = [trial.suggest_categorical(f"site_{i}", [0, 1]) for i in range(self.site_count)]
                if self.max_sites is not None:
                    trial.set_constraint(MAX_SITES_CONSTRAINT, sum(bits) - self.max_sites)
        # a conditional key's fixed value is for the trials that did not sample it (Ray lets the return win)
        return {k: v for k, v in self.fixed.items() if k not in chosen}


class SweepSearch(OptunaSearch):
    """Ray's OptunaSearch that rejects masks over ``max_sites`` before they train (see the module docstring), and,
    for a grid (``distinct``), combinations that repeat a trial already run (they differ only in a conditional key
    that trial did not sample)."""

    def __init__(self, *, max_sites: int | None = None, site_count: int = 0, distinct: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._max_sites, self._site_keys = max_sites, [f"site_{i}" for i in range(site_count)]
        self._distinct, self._sampled = distinct, set()  # the sampled values of every trial suggested so far
        self.rejected = 0  # samples told to the study without training

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_DRAWS):
            config = super().suggest(trial_id)
            sampled = tuple(sorted(self._ot_trials[trial_id].params.items()))
            if self._max_sites is not None and sum(config[k] for k in self._site_keys) > self._max_sites:
                self._reject(trial_id)
            elif self._distinct and sampled in self._sampled:
                self._reject(trial_id)
            else:
                self._sampled.add(sampled)
                return config
        raise RuntimeError(f"no new sample within search.max_sites ({self._max_sites}) in {MAX_DRAWS} draws")

    def _reject(self, trial_id: str) -> None:
        """Finish the sample as an infeasible trial: its constraint ranks it, so its values are only placeholders
        (the worst possible, in case anything reads them)."""
        worst = [-math.inf if mode == "max" else math.inf for mode in (self._mode if isinstance(self._mode, list) else [self._mode])]
        self._ot_study.tell(self._ot_trials.pop(trial_id), worst if isinstance(self._mode, list) else worst[0])
        self.rejected += 1


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, in the order its seed shuffles, one point per trial number. Tune's ``num_samples`` ends the
    sweep: the grid's own ``study.stop()`` only works inside ``study.optimize`` (it raises under ask-and-tell)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    s = sweep.spec.search
    if s.algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(2, s.num_samples // 3)))
    if s.algorithm == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=sweep.population_size, seed=s.seed)
    if s.algorithm == "grid":
        return TuneGridSampler(sweep.grid(), seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def make_searcher(sweep: Sweep) -> Searcher:
    s = sweep.spec.search
    metrics, modes = (list(x) for x in zip(*sweep.objectives))
    space = SpaceSampler({k: d.model_dump() for k, d in sweep.spec.space.items()}, sweep.fixed_values(), sweep.site_count,
                         s.max_sites)
    searcher = SweepSearch(space=space, metric=metrics if len(metrics) > 1 else metrics[0], mode=modes if len(modes) > 1 else modes[0],
                           sampler=make_sampler(sweep), points_to_evaluate=sweep.points or None, max_sites=s.max_sites,
                           site_count=sweep.site_count, distinct=s.algorithm == "grid")
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)


def make_scheduler(sweep: Sweep) -> TrialScheduler:
    s = sweep.spec.search
    if s.scheduler == "none":
        return FIFOScheduler()
    metric, mode = ASHA_METRIC
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=sweep.base.epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)
