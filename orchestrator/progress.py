"""The driver's console while a sweep runs: Ray Tune's trial table, reprinted only when something changed.

Ray 2.60's default console (its "new output engine" at ``verbose=1``) prints the whole config of every
trial when it starts and every reported value (θ/ω included) when it ends: dozens of lines per trial.
Its reporter cannot be replaced, so the driver uses Tune's classic console instead
(``RAY_AIR_NEW_OUTPUT=0``, set by ``cluster.local.prepare_env``) with this reporter: one table of the
searched values, status and headline metrics, the best trial so far above it. Trials print one line per
epoch themselves (``trainables.trainable.epoch_line``).
"""

from __future__ import annotations

import collections
import time

from ray.tune import CLIReporter

from search_spaces.schema import Sweep

MIN_INTERVAL_S = 30.0  # at most one table per 30 s, and only when a trial started, ended or the best changed
HEARTBEAT_S = 300.0  # but at least one every 5 minutes, so a long epoch does not look like a hang


class SweepReporter(CLIReporter):
    def __init__(self, sweep: Sweep, min_interval_s: float = MIN_INTERVAL_S, heartbeat_s: float = HEARTBEAT_S):
        columns = {"epoch": "epoch", "val_acc": "val_acc", **{m: m for m, _ in sweep.objectives}}
        if "mask" in sweep.spec.space:  # searched as one choice per site; the trial reports it folded
            columns["mask"] = "mask"
        params = [k for k, d in sweep.spec.space.items() if d.type != "sites"]
        super().__init__(
            metric_columns=columns,
            parameter_columns=params,
            metric=sweep.metric,
            mode=sweep.mode,
            sort_by_metric=True,
            print_intermediate_tables=True,
            max_progress_rows=20,
        )
        self.min_interval_s, self.heartbeat_s = min_interval_s, heartbeat_s
        self._last_time, self._last_state = float("-inf"), None

    def report(self, trials, done: bool, *sys_info: str) -> None:
        # Tune names Ray's session scratch directory as the "Result logdir"; the sweep's own path is printed at the end.
        text = self._progress_str(trials, done, *sys_info)
        self._print("\n".join(line for line in text.splitlines() if not line.startswith("Result logdir:")))

    def should_report(self, trials, done: bool = False) -> bool:
        if done:  # the driver prints its own summary of every trial
            return False
        state = self._state(trials)
        since = time.time() - self._last_time
        if (state != self._last_state and since >= self.min_interval_s) or since >= self.heartbeat_s:
            self._last_time, self._last_state = time.time(), state
            return True
        return False

    def _state(self, trials) -> tuple:
        """What a reader wants to hear about: how many trials are in which status, and which one leads."""
        best, _ = self._current_best_trial(trials)
        return tuple(sorted(collections.Counter(t.status for t in trials).items())), best and best.trial_id
