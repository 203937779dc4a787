"""The searcher and scheduler a sweep file asks for, built for Ray Tune.

``SweepSearcher`` drives its own Optuna study by ask-and-tell behind Ray Tune's public ``Searcher`` interface.
It does not subclass Ray's Optuna integration, whose private fields a subclass would have to read (a Ray upgrade
that renamed them would break the sweep silently). Tune calls only ``Searcher``'s public methods (``suggest``,
``on_trial_result``, ``on_trial_complete``, ``save``/``restore``), and the study is ``searcher.study``.

The space is define-by-run (``SpaceSampler``): it suggests every searched key (a conditional one only where its
``when`` holds) and adds the fixed trial values, so each trial's Tune config is its whole flat trial config.

``max_sites``: a mask with more sites on is *rejected*, never trained. The space records the violation as an
Optuna constraint (``trial.set_constraint``, Optuna 5's replacement of ``constraints_func``), ``SweepSearcher``
tells the study at once that the sample finished infeasible, and draws again. TPE then ranks it below every
feasible trial by its violation, NSGA-II by constrained domination, so both learn to propose feasible masks.
Penalising instead (training it and reporting a bad score) would spend a trial's compute on a mask the user ruled
out, and put an invented number into the objective the sampler models.
"""

from __future__ import annotations

import logging
import math
import pickle
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from search_spaces.schema import Sweep, when_holds

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver's console is Tune's trial table, not Optuna's notices
ASHA_METRIC = ("val_acc", "max")  # ASHA compares trials at each rung on the epoch's top-1 accuracy
MAX_SITES_CONSTRAINT = "max_sites"  # the Optuna constraint: sites on − max_sites (feasible at ≤ 0)
MAX_DRAWS = 20_000  # draws per trial before a mask within max_sites is given up on
TUNE_TRIAL_ID = "tune_trial_id"  # the user attribute of each trained Optuna trial: its Ray Tune trial id


class SpaceSampler:
    """Define-by-run space: suggests the searched keys on an Optuna trial and returns the whole trial config.
    A module-level class, not a closure: Tune pickles it with the searcher."""

    max_sites: int | None = None  # class default: a sampler pickled before max_sites existed still loads

    def __init__(self, space: dict[str, dict], fixed: dict[str, Any], site_count: int, max_sites: int | None = None):
        self.space, self.fixed, self.site_count, self.max_sites = space, fixed, site_count, max_sites

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
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
        # the sampled values (site_<i> bits included) in the order suggested, then the fixed ones; a conditional
        # key's fixed value is for the trials that did not sample it
        return {**trial.params, **{k: v for k, v in self.fixed.items() if k not in chosen}}


class SweepSearcher(Searcher):
    """Ray Tune searcher over an Optuna study it owns (ask-and-tell).

    Rejects masks over ``max_sites`` before they train (see the module docstring) and, for a grid (``distinct``),
    combinations that repeat a trial already run (they differ only in a conditional key that trial did not sample).

    ``storage`` (None: in memory) and ``study_name`` are Optuna's: with an RDB storage the study's trials live
    there; the state Tune saves still pickles the study, which Optuna does as the storage's URL (and its cache of
    trials), reconnecting on load. Tell and report then go to the storage.
    """

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict[str, Any]],
        *,
        metric: str | list[str],
        mode: str | list[str],
        sampler: optuna.samplers.BaseSampler,
        points_to_evaluate: Sequence[dict[str, Any]] | None = None,
        max_sites: int | None = None,
        site_count: int = 0,
        distinct: bool = False,
        storage: str | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
    ):
        super().__init__(metric=metric, mode=mode)
        self._space = space
        self._max_sites, self._site_keys = max_sites, [f"site_{i}" for i in range(site_count)]
        self._distinct = distinct
        modes = mode if isinstance(mode, list) else [mode]
        # Tune's scheduler (ASHA) stops trials, so Optuna's pruner never decides: NopPruner says so
        self.study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name,
            load_if_exists=True,
            directions=["maximize" if m == "max" else "minimize" for m in modes],
        )
        if not self.study.trials:  # a study loaded from a storage holds its points already
            for point in points_to_evaluate or []:
                self.study.enqueue_trial(point)  # asked first, in order; a key a point lacks is sampled
        # what changes as the sweep runs, all of it in get_state
        self._running: dict[str, optuna.Trial] = {}  # Tune trial id → its Optuna trial, asked and not yet told
        self._completed: set[str] = set()  # Tune trial ids told to the study
        self._sampled: set[tuple] = set()  # the sampled values of every trial suggested (a grid's ``distinct``)
        self.rejected = 0  # samples told to the study without training

    # --- what Tune calls --------------------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return False  # the space, metric and mode come from the sweep file; a Tune param_space is not ours to take

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(MAX_DRAWS):
            trial = self.study.ask()
            config = self._space(trial)
            sampled = tuple(sorted(trial.params.items()))
            over = self._max_sites is not None and sum(config[k] for k in self._site_keys) > self._max_sites
            if over or (self._distinct and sampled in self._sampled):
                self._reject(trial)
            else:
                self._sampled.add(sampled)
                self._running[trial_id] = trial
                trial.set_user_attr(TUNE_TRIAL_ID, trial_id)  # which Ray trial it is, in optuna-dashboard too
                return config
        raise RuntimeError(f"no new sample within search.max_sites ({self._max_sites}) in {MAX_DRAWS} draws")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each epoch's metric becomes an intermediate value of the Optuna trial (single objective only: Optuna
        keeps none for several). No pruner reads it; it is the study's learning curve."""
        trial = self._running.get(trial_id)
        if trial is not None:
            self._report(trial, result)

    def _report(self, trial: optuna.Trial, result: dict | None) -> None:
        step = (result or {}).get("training_iteration")
        if isinstance(self.metric, list) or step is None or self.metric not in result:
            return
        with warnings.catch_warnings():  # a step told twice (the last result, a resumed epoch) keeps its first value
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(result[self.metric], step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._running.pop(trial_id, None)
        if trial is None:  # told already (an errored trial that resume ran again), or not one of ours
            if trial_id in self._completed:
                log.warning("trial %s completed again; the study keeps its first result", trial_id)
            return
        self._completed.add(trial_id)
        # Tune gives a trial's last result to on_trial_complete alone when its scheduler stops it (ASHA at max_t or
        # early), and to both when the trial ends by itself: the learning curve ends at the last epoch either way
        self._report(trial, result)
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [(result or {}).get(m) for m in metrics]
        if any(v is None for v in values):  # no result: failed, or stopped before it reported the metric
            state, values = (TrialState.FAIL if error else TrialState.PRUNED), None
        else:
            state = None  # Optuna completes it, or fails it with a warning for a NaN (a diverged trial)
        try:
            self.study.tell(trial, values, state=state)
        except Exception as exc:  # one trial Optuna refuses must not end the sweep
            log.warning("trial %s: the study refused its result: %s", trial_id, exc)

    # --- the state Tune saves in the experiment checkpoint and restores on Tuner.restore ----------------------------

    def get_state(self) -> dict:
        """The study (its trials, or the address of the storage that holds them, and its sampler with the random
        state) and the trials still running. One object: the running Optuna trials pickle with their study."""
        return {
            "study": self.study,
            "running": self._running,
            "completed": self._completed,
            "sampled": self._sampled,
            "rejected": self.rejected,
        }

    def set_state(self, state: dict) -> None:
        self.study, self._running, self._completed = state["study"], state["running"], state["completed"]
        self._sampled, self.rejected = state["sampled"], state["rejected"]
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        """With an RDB storage the study is the storage's, not the saved copy: a trial asked after the last save
        (a driver that was killed, not interrupted) is still RUNNING there, and no Tune trial will tell it. Fail it,
        so the study does not show it running forever, and enqueue its fixed point again (a points_to_evaluate
        entry it had taken). In memory the study is the saved copy, whose running trials are all in ``_running``."""
        told_later = {t.number for t in self._running.values()}
        for orphan in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if orphan.number in told_later:
                continue
            self.study.tell(orphan.number, state=TrialState.FAIL)
            if "fixed_params" in orphan.system_attrs:
                self.study.enqueue_trial(orphan.system_attrs["fixed_params"])
            log.warning("optuna trial %d was asked after the searcher's last save; marked failed", orphan.number)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Tune restores the searcher it pickled when the sweep started (its space, metric, sampler settings), then
        this state: the restored sweep asks the same study, and a trial that was running is told when it ends."""
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def _reject(self, trial: optuna.Trial) -> None:
        """Finish the sample as an infeasible trial: its constraint ranks it, so its values are only placeholders
        (the worst possible, in case anything reads them)."""
        modes = self.mode if isinstance(self.mode, list) else [self.mode]
        self.study.tell(trial, [-math.inf if m == "max" else math.inf for m in modes])
        self.rejected += 1


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, in the order its seed shuffles, one point per trial number. Tune's ``num_samples`` ends the
    sweep: the grid's own ``study.stop()`` only works inside ``study.optimize`` (it raises under ask-and-tell)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: from Optuna 5.1 its genetic-algorithm base holds a ``threading.Lock``, which
    cannot be pickled, and Tune pickles the searcher (with its sampler) into the experiment state. The lock is left
    out and made anew on load; nothing else changes."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    s = sweep.spec.search
    grid = sweep.grid() if s.algorithm == "grid" else None
    return sampler_for(s.algorithm, s.num_samples, s.seed, sweep.population_size, grid)


def sampler_for(
    algorithm: str, num_samples: int, seed: int | None, population_size: int, grid=None
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a sweep of ``num_samples`` trials (bench_insertion.py replays sweeps with it)."""
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, num_samples // 3)))
    if algorithm == "nsga2":
        return PicklableNSGAIISampler(population_size=population_size, seed=seed)
    if algorithm == "grid":
        return TuneGridSampler(grid, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_searcher(sweep: Sweep, *, storage: str | None = None, study_name: str | None = None) -> Searcher:
    """The sweep's searcher; ``storage`` (an Optuna RDB URL; None: in memory) and ``study_name`` are its study's."""
    s = sweep.spec.search
    metrics, modes = (list(x) for x in zip(*sweep.objectives))
    space = SpaceSampler(
        {k: d.model_dump() for k, d in sweep.spec.space.items()}, sweep.fixed_values(), sweep.site_count, s.max_sites
    )
    searcher = SweepSearcher(
        space,
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=make_sampler(sweep),
        points_to_evaluate=sweep.points,
        max_sites=s.max_sites,
        site_count=sweep.site_count,
        distinct=s.algorithm == "grid",
        storage=storage,
        study_name=study_name,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)


def make_scheduler(sweep: Sweep) -> TrialScheduler:
    s = sweep.spec.search
    if s.scheduler == "none":
        return FIFOScheduler()
    metric, mode = ASHA_METRIC
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=sweep.base.epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )
