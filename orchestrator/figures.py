"""Every trial's figures, drawn in the driver from what its MLflow run holds, so trials spend no time on them.

A trial logs numbers and tables (its metrics per epoch, ``sites.csv``); when Tune reports the trial ended
(completed, stopped by the scheduler, failed), the driver queues it, and one background thread draws
``theta_omega.csv``/``.png``, ``learning_curves.png`` and ``sites.png`` onto its run — the same path for every
trial. The end of a sweep waits for the queue and draws whatever is still missing (after a ``resume``, say).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator import trial_plots as plots
from trainables.metrics import EMA_METRICS, EPOCH_METRICS, parse_act_metric_key
from trainables.mlflow_client import mlflow_client
from trainables.retry import retry
from trainables.tracking import SweepContext, artifact_repository

log = logging.getLogger(__name__)
TRIAL_FIGURES = ("theta_omega.csv", "theta_omega.png", "learning_curves.png", "sites.png")


def per_epoch(key: str) -> bool:
    """Whether a trial logs ``key`` every epoch (the end-of-trial record and convergence values it logs once)."""
    return key in EPOCH_METRICS or key in EMA_METRICS or parse_act_metric_key(key) is not None


def run_history(client: MlflowClient, run: Run) -> dict[str, list[tuple[int, float]]]:
    """Every per-epoch metric of a run as ``(epoch, value)`` points, epoch order (end-of-trial values, logged at step 0,
    left out). One call per key: the keys logged once (four convergence values per θ/ω) are not asked for."""
    history = {}
    for key in filter(per_epoch, run.data.metrics):
        points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key) if m.step >= 1)
        if points:
            history[key] = points
    return history


def act_history(history: dict[str, list[tuple[int, float]]]) -> list[dict]:
    """The activations' part of ``run_history`` (θ/ω, PWLU's boundaries, …) in ``Training.act_history`` form:
    ``[{"epoch": e, "state": {path: {"theta/1": value, …}}}]``."""
    by_epoch: dict[int, dict] = {}
    for key, points in history.items():
        parsed = parse_act_metric_key(key)
        if not parsed:
            continue
        path, name = parsed
        for epoch, value in points:
            by_epoch.setdefault(epoch, {}).setdefault(path, {})[name] = value
    return [{"epoch": e, "state": state} for e, state in sorted(by_epoch.items())]


def log_figure(client: MlflowClient, run_id: str, fig, name: str) -> None:
    """Log a matplotlib figure as the PNG artifact ``name`` (written by ``plots.png_bytes``, as the trials' are) and
    free it."""
    try:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d, name)
            path.write_bytes(plots.png_bytes(fig))
            client.log_artifact(run_id, str(path))
    finally:
        plots.close(fig)


@lru_cache(maxsize=128)
def sites_png(sites_csv: str) -> bytes:
    """``sites.png`` for a ``sites.csv``: it shows only the network's sites and its mask (no run name), so the trials
    of one network and mask share one drawing."""
    fig = plots.sites_figure(list(csv.DictReader(io.StringIO(sites_csv))))
    try:
        return plots.png_bytes(fig)
    finally:
        plots.close(fig)


def draw_trial_figures(client: MlflowClient, run_id: str) -> None:
    """``theta_omega.csv``/``.png``, ``learning_curves.png`` and ``sites.png`` of one trial, from its run, logged in
    one call."""
    run = client.get_run(run_id)
    title, history = run.info.run_name, run_history(client, run)
    rows = plots.theta_omega_rows(act_history(history))
    curves = {k: v for k, v in history.items() if k in EPOCH_METRICS}
    artifacts = artifact_repository(client, run.info.artifact_uri)  # the client's calls would look the run up again
    with tempfile.TemporaryDirectory() as d:
        sites_csv = Path(artifacts.download_artifacts("sites.csv", d)).read_text(encoding="utf-8")
        out = Path(d, "figures")
        out.mkdir()
        (out / "theta_omega.csv").write_text(plots.theta_omega_csv(rows), encoding="utf-8")
        (out / "theta_omega.png").write_bytes(plots.theta_omega_png(rows, title))
        (out / "learning_curves.png").write_bytes(plots.learning_curves_png(curves, title))
        (out / "sites.png").write_bytes(sites_png(sites_csv))
        artifacts.log_artifacts(str(out))


class FigureQueue:
    """One background thread drawing trials' figures in the order their trials ended."""

    def __init__(self, tracking_uri: str):
        self.client = mlflow_client(tracking_uri)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lslu-figures")
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.cpu_s = 0.0  # CPU time the thread has spent drawing (benchmarks/bench_sweep.py reports it per trial)

    def submit(self, run_id: str) -> None:
        with self._lock:
            self._pending.append(self._pool.submit(self._draw, run_id))

    def _draw(self, run_id: str) -> None:
        start = time.thread_time()
        try:
            retry(
                lambda: draw_trial_figures(self.client, run_id),
                budget_s=60,
                what=f"drawing the figures of run {run_id}",
            )
        except Exception as exc:  # the end of the sweep draws what is missing
            log.warning("could not draw the figures of run %s: %s", run_id, exc)
        finally:
            self.cpu_s += time.thread_time() - start

    def drain(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()


_QUEUES: dict[str, FigureQueue] = {}


def figure_queue(tracking_uri: str) -> FigureQueue:
    """The driver's queue for this tracking store (one per process, shared by the callback Tune may restore)."""
    if tracking_uri not in _QUEUES:
        _QUEUES[tracking_uri] = FigureQueue(tracking_uri)
    return _QUEUES[tracking_uri]


def complete_figures(ctx: SweepContext) -> int:
    """Wait for the queue, then draw the figures of every trial run of the sweep that still lacks them; returns how
    many."""
    figure_queue(ctx.tracking_uri).drain()
    client = mlflow_client(ctx.tracking_uri)
    drawn = 0
    for run in client.search_runs([ctx.experiment_id], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}'"):
        held = {a.path for a in client.list_artifacts(run.info.run_id)}
        if not set(TRIAL_FIGURES) <= held and "sites.csv" in held:
            retry(lambda: draw_trial_figures(client, run.info.run_id), budget_s=60, what="drawing a trial's figures")
            drawn += 1
    return drawn
