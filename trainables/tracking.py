"""In-trial MLflow logging: one child run per trial under the sweep's parent run (DESIGN.md §5).

Ray's ``setup_mlflow`` always opens a new run, so a restored trial would get a second one. Instead the
trial opens its run with ``MlflowClient.create_run`` the first time and keeps the run id in its
checkpoint; after a restore it reopens that run and skips the epochs the run already holds, so each
epoch is logged exactly once even if the trial died between logging an epoch and checkpointing it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trainables import plots
from trainables.config import TrialConfig
from trainables.metrics import act_metrics, parse_act_metric_key

RUN_STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "diverged": "FAILED", "oom": "FAILED", "failed": "FAILED"}
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
    """``<model>-<insert_act>[-n<n>]-<policy or mask>-<trial id>`` (n only for LSLU): readable in the MLflow run list."""
    where = mask if cfg.policy == "mask" else cfg.policy_spec.replace(":", "")
    act = f"{cfg.insert_act}-n{cfg.n}" if cfg.insert_act == "lslu" else cfg.insert_act
    return f"{cfg.model}-{act}-{where}-{trial_id}"


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
        client.log_text(run.info.run_id, sites_csv, "sites.csv")
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

    def log_record(self, record: dict[str, float]) -> None:
        """End-of-trial style metrics known early (step 0), e.g. the deploy form's params_m, flops_g, latency_ms."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in record.items()])

    def finish(self, status: str, final: dict[str, float], act_history: list[dict], title: str, reason: str = "",
               files: str | None = None) -> None:
        """End-of-trial metrics, the θ/ω artifacts, the files in ``files`` (a folder), the status tag, the run status."""
        if final:
            now = int(time.time() * 1000)
            held = self.client.get_run(self.run_id).data.metrics  # e.g. the record logged at the start: never twice
            batch = [Metric(k, float(v), now, 0) for k, v in final.items() if k not in held]
            for i in range(0, len(batch), 1000):
                self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        log_theta_omega(self.client, self.run_id, plots.theta_omega_rows(act_history), title)
        if files:
            self.client.log_artifacts(self.run_id, files)
        end(self.client, self.run_id, status, reason)


def find_trial_run(client: MlflowClient, ctx: SweepContext, trial_id: str) -> str | None:
    runs = client.search_runs([ctx.experiment_id], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.trial_id = '{trial_id}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def log_theta_omega(client: MlflowClient, run_id: str, rows: list[dict], title: str) -> None:
    client.log_text(run_id, plots.theta_omega_csv(rows), "theta_omega.csv")
    fig = plots.theta_omega_figure(rows, title)
    try:
        client.log_figure(run_id, fig, "theta_omega.png")
    finally:
        plots.close(fig)


def end(client: MlflowClient, run_id: str, status: str, reason: str = "") -> None:
    tags = [RunTag("status", status)] + ([RunTag("status_reason", reason[:5000])] if reason else [])
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, RUN_STATUS[status])


def act_history_from_run(client: MlflowClient, run_id: str) -> list[dict]:
    """Rebuild a trial's θ/ω (and PWLU boundary) history from what its run logged (for runs the driver has to close)."""
    keys = [k for k in client.get_run(run_id).data.metrics if parse_act_metric_key(k)]
    by_epoch: dict[int, dict] = {}
    for key in keys:
        param, path, i = parse_act_metric_key(key)
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {}).setdefault(path, {}).setdefault(param, {})[i] = m.value
    return [{"epoch": e, "state": {p: {k: [v[j] for j in sorted(v)] for k, v in params.items()} for p, params in state.items()}}
            for e, state in sorted(by_epoch.items())]


__all__ = ["SweepContext", "TrialRun", "act_history_from_run", "act_metrics", "end", "find_trial_run", "log_theta_omega", "run_name"]
