"""In-trial MLflow logging: one child run per trial under the sweep's parent run (DESIGN.md §5).

Ray's ``setup_mlflow`` always opens a new run, so a restored trial would get a second one. Instead the
trial opens its run with ``MlflowClient.create_run`` the first time and keeps the run id in its
checkpoint; after a restore it reopens that run and skips the epochs the run already holds, so each
epoch is logged exactly once even if the trial died between logging an epoch and checkpointing it.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainables import plots
from trainables.config import TrialConfig
from trainables.metrics import EPOCH_METRICS, act_metrics, parse_act_metric_key

RUN_STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call


@dataclass(frozen=True)
class SweepContext:
    """What a trial needs to know about its sweep; built by the driver, passed with ``tune.with_parameters``."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    tags: dict[str, str] = field(default_factory=dict)  # copied onto every child run (git commit, sweep file hash)


def run_name(cfg: TrialConfig, mask: str, trial_id: str) -> str:
    """``<model>-<insert_act>-n<n>-<policy or mask>-<trial id>``: readable in the MLflow run list."""
    where = mask if cfg.policy == "mask" else cfg.policy_spec.replace(":", "")
    return f"{cfg.model}-{cfg.insert_act}-n{cfg.n}-{where}-{trial_id}"


class TrialRun:
    def __init__(self, client: MlflowClient, run_id: str, logged_through: int):
        self.client, self.run_id, self.logged_through = client, run_id, logged_through

    @classmethod
    def open(cls, ctx: SweepContext, cfg: TrialConfig, trial_id: str, mask: str, sites_csv: str,
             run_id: str | None = None) -> "TrialRun":
        """The trial's run: the one its checkpoint names, else the one it opened before it was restarted
        without a checkpoint (found by parent run and trial id), else a new one."""
        if run_id is None:
            run_id = find_trial_run(MlflowClient(ctx.tracking_uri), ctx, trial_id)
        return cls.reopen(ctx, run_id) if run_id else cls.create(ctx, cfg, trial_id, mask, sites_csv)

    @classmethod
    def create(cls, ctx: SweepContext, cfg: TrialConfig, trial_id: str, mask: str, sites_csv: str) -> "TrialRun":
        client = MlflowClient(ctx.tracking_uri)
        tags = {**ctx.tags, "mlflow.parentRunId": ctx.parent_run_id, "sweep": ctx.sweep_name, "trial_id": trial_id,
                "mask": mask, "status": "running", "model": cfg.model, "dataset": cfg.dataset, "insert_act": cfg.insert_act,
                "policy": cfg.policy_spec}
        run = client.create_run(ctx.experiment_id, run_name=run_name(cfg, mask, trial_id), tags=tags)
        params = [Param(k, str(v)) for k, v in cfg.to_dict().items()]
        for i in range(0, len(params), _BATCH):
            client.log_batch(run.info.run_id, params=params[i : i + _BATCH])
        client.log_text(run.info.run_id, yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
        log_sites(client, run.info.run_id, sites_csv, run.info.run_name)
        return cls(client, run.info.run_id, logged_through=0)

    @classmethod
    def reopen(cls, ctx: SweepContext, run_id: str) -> "TrialRun":
        client = MlflowClient(ctx.tracking_uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "status", "running")
        history = client.get_metric_history(run_id, "train_loss")
        return cls(client, run_id, logged_through=max((m.step for m in history), default=0))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics in one batch, at ``step=epoch``; epochs the run already holds are skipped."""
        if epoch <= self.logged_through:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's per-call metric limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        self.logged_through = epoch

    def finish(self, status: str, final: dict[str, float], title: str, reason: str = "") -> None:
        """End-of-trial metrics, the trial's figures, the status tag, and the terminal run status."""
        if final:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in final.items()])
        log_trial_figures(self.client, self.run_id, title)
        end(self.client, self.run_id, status, reason)


def find_trial_run(client: MlflowClient, ctx: SweepContext, trial_id: str) -> str | None:
    runs = client.search_runs([ctx.experiment_id], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.trial_id = '{trial_id}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def log_trial_figures(client: MlflowClient, run_id: str, title: str) -> None:
    """``theta_omega.csv``/``.png`` and ``learning_curves.png``, drawn from what the run holds.

    The one rendering path for a trial that finishes and for one the driver closes (stopped by the scheduler).
    """
    history = run_history(client, run_id)
    rows = plots.theta_omega_rows(act_history(history))
    client.log_text(run_id, plots.theta_omega_csv(rows), "theta_omega.csv")
    log_figure(client, run_id, plots.theta_omega_figure(rows, title), "theta_omega.png")
    curves = {k: v for k, v in history.items() if k in EPOCH_METRICS}
    log_figure(client, run_id, plots.learning_curves_figure(curves, title), "learning_curves.png")


def log_sites(client: MlflowClient, run_id: str, sites_csv: str, title: str) -> None:
    """The site table (``sites.csv``) and its picture (``sites.png``), drawn from the table itself."""
    client.log_text(run_id, sites_csv, "sites.csv")
    log_figure(client, run_id, plots.sites_figure(list(csv.DictReader(io.StringIO(sites_csv))), title), "sites.png")


def log_figure(client: MlflowClient, run_id: str, fig, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact and free it."""
    try:
        client.log_figure(run_id, fig, name)
    finally:
        plots.close(fig)


def end(client: MlflowClient, run_id: str, status: str, reason: str = "") -> None:
    tags = [RunTag("status", status)] + ([RunTag("status_reason", reason[:5000])] if reason else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, RUN_STATUS[status])


def run_history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every per-epoch metric of a run as ``(epoch, value)`` points, epoch order (end-of-trial values, logged at step 0, left out)."""
    history = {}
    for key in client.get_run(run_id).data.metrics:
        points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key) if m.step >= 1)
        if points:
            history[key] = points
    return history


def act_history(history: dict[str, list[tuple[int, float]]]) -> list[dict]:
    """The θ/ω part of ``run_history`` in ``Training.act_history`` form: ``[{"epoch": e, "state": {path: {...}}}]``."""
    by_epoch: dict[int, dict] = {}
    for key, points in history.items():
        parsed = parse_act_metric_key(key)
        if not parsed:
            continue
        param, path, i = parsed
        for epoch, value in points:
            site = by_epoch.setdefault(epoch, {}).setdefault(path, {"theta": {}, "omega": {}})
            site[param][i] = value
    return [{"epoch": e, "state": {p: {k: [v[j] for j in sorted(v)] for k, v in params.items()} for p, params in state.items()}}
            for e, state in sorted(by_epoch.items())]


def act_history_from_run(client: MlflowClient, run_id: str) -> list[dict]:
    """Rebuild a trial's θ/ω history from what its run logged."""
    return act_history(run_history(client, run_id))


__all__ = ["SweepContext", "TrialRun", "act_history", "act_history_from_run", "act_metrics", "end", "find_trial_run",
           "log_figure", "log_sites", "log_trial_figures", "run_history", "run_name"]
