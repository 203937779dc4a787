"""The searcher and scheduler a sweep file asks for, built for Ray Tune.

The space is define-by-run (``OptunaSearch(space=callable)``): the callable suggests every searched key
and returns the fixed trial values as constants, so each trial's Tune config is its whole flat trial config.
"""
from __future__ import annotations

from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces.schema import Sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver's console is Tune's trial table, not Optuna's notices
ASHA_METRIC = ("val_acc", "max")  # ASHA compares trials at each rung on the epoch's top-1 accuracy


class SpaceSampler:
    """Define-by-run space. A module-level class, not a closure: Tune pickles it with the searcher's state."""

    def __init__(self, space: dict[str, dict], fixed: dict[str, Any], site_count: int):
        self.space, self.fixed, self.site_count = space, fixed, site_count

    def __call__(self, trial) -> dict[str, Any]:
        for key, dist in self.space.items():
            kind = dist["type"]
            if kind == "int":
                trial.suggest_int(key, dist["low"], dist["high"], step=dist["step"], log=dist["log"])
            elif kind == "float":
                trial.suggest_float(key, dist["low"], dist["high"], step=dist["step"], log=dist["log"])
            elif kind == "categorical":
                trial.suggest_categorical(key, dist["choices"])
            else:  # sites: one on/off choice per activation site
                for i in range(self.site_count):
                    trial.suggest_categorical(f"site_{i}", [0, 1])
        return dict(self.fixed)


def make_searcher(sweep: Sweep) -> Searcher:
    s = sweep.spec.search
    sampler = (optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=min(10, max(2, s.num_samples // 3)))
               if s.algorithm == "tpe" else optuna.samplers.RandomSampler(seed=s.seed))
    space = SpaceSampler({k: d.model_dump() for k, d in sweep.spec.space.items()}, sweep.fixed_values(), sweep.site_count)
    searcher = OptunaSearch(space=space, metric=s.metric, mode=s.mode, sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)


def make_scheduler(sweep: Sweep) -> TrialScheduler:
    s = sweep.spec.search
    if s.scheduler == "none":
        return FIFOScheduler()
    metric, mode = ASHA_METRIC
    return ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode, max_t=sweep.base.epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)
