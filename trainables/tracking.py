"""In-trial MLflow logging: one child run per trial under the sweep's parent run (DESIGN.md §5).

Ray's ``setup_mlflow`` always opens a new run, so a restored trial would get a second one. Instead the
trial opens its run with ``MlflowClient.create_run`` the first time and keeps the run id in its
checkpoint; after a restore it reopens that run and skips the epochs the run already holds, so each
epoch is logged exactly once even if the trial died between logging an epoch and checkpointing it.

A tracking-server outage never stops training: an epoch's batch that cannot be sent within a few seconds
of backoff is queued (``unsent``, kept in the trial checkpoint too) and sent, in order, with the next
epoch once the server answers again. A resent batch carries the same timestamps, which MLflow's store
takes as the same rows, so a batch whose answer was lost is not logged twice. Opening and finishing the
run wait for the server (``LSLU_MLFLOW_OUTAGE_WAIT_S``, default 900 s) rather than lose the trial.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from trainables.activations import config_fields
from trainables.mlflow_client import mlflow_client
from trainables.config import TrialConfig
from trainables.imports import short_name
from trainables.metrics import act_metrics
from trainables.retry import is_transient, retry

log = logging.getLogger(__name__)
# A trial ASHA stopped ended as its search meant it to, with valid metrics: FINISHED, as Ray's own MLflow callback
# ends it (KILLED would read as an interruption and drop it from `attributes.status = 'FINISHED'`); tags.status tells.
RUN_STATUS = {
    "completed": "FINISHED",
    "stopped_early": "FINISHED",
    "diverged": "FAILED",
    "oom": "FAILED",
    "failed": "FAILED",
}
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
_METRICS = 1000  # ... and at most 1000 metrics, 1000 entries in all


def epoch_retry_s() -> float:
    """How long one epoch's logging retries before its batch is queued and training goes on."""
    return float(os.environ.get("LSLU_MLFLOW_EPOCH_RETRY_S", 5))


def outage_wait_s() -> float:
    """How long opening or finishing a trial's run waits for the tracking server."""
    return float(os.environ.get("LSLU_MLFLOW_OUTAGE_WAIT_S", 900))


@dataclass(frozen=True)
class SweepContext:
    """What a trial needs to know about its sweep; built by the driver, passed with ``tune.with_parameters``."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_name: str
    tags: dict[str, str] = field(default_factory=dict)  # copied onto every child run (git commit, sweep file hash)


def run_name(cfg: TrialConfig, mask: str, trial_id: str) -> str:
    """``<model>-<insert_act>[-n<n>]-<policy or mask>-<trial id>`` (n only for LSLU), or ``<model>-none-<trial id>``
    for a trial that inserts nothing (policy none, LSLU with n = 0, a mask of zeros: ``mask`` is what its policy
    selected): readable in the MLflow run list, an import path in its short form (``nets.build``); the trial id
    keeps names unique."""
    model = short_name(cfg.model)
    if not cfg.inserts or (mask and "1" not in mask):
        return f"{model}-none-{trial_id}"
    where = mask if cfg.policy == "mask" else cfg.policy_spec.replace(":", "")
    act = short_name(cfg.insert_act)
    act = f"{act}-n{cfg.n}" if "n" in config_fields(cfg.insert_act).values() else act
    return f"{model}-{act}-{where}-{trial_id}"


class TrialRun:
    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        logged_through: int,
        unsent: list | None = None,
        logged_keys: set[str] | None = None,
        artifact_uri: str | None = None,
    ):
        self.client, self.run_id, self.logged_through = client, run_id, logged_through
        self.artifact_uri = artifact_uri  # known to a run this trial created; asked for when first needed otherwise
        self.unsent: list[tuple[int, list[Metric]]] = unsent or []  # (epoch, batch) not yet sent, oldest first
        # metric keys the run holds, or will once ``unsent`` is sent: kept here for a run this trial created (so
        # no call asks), None for a reopened run until the run is asked
        self.logged_keys = logged_keys

    @classmethod
    def open(
        cls,
        ctx: SweepContext,
        cfg: TrialConfig,
        trial_id: str,
        mask: str,
        sites_csv: str | None,
        run_id: str | None = None,
        unsent: list | None = None,
        tags: dict[str, str] | None = None,
        record: dict[str, float] | None = None,
        summary: str | None = None,
        name: str | None = None,
    ) -> "TrialRun":
        """The trial's run: the one its checkpoint names, else the one it opened before it was restarted
        without a checkpoint (found by parent run and trial id), else a new one. ``unsent`` is
        ``unsent_state()`` from the checkpoint: batches the run did not get before the trial stopped.
        ``tags`` are set on the run each time it is opened (where the trial runs now). ``record``: end-of-trial
        style metrics known at the start (``log_record``), logged with the params of a new run. ``summary``: a new
        run's ``model_summary.txt``."""
        if run_id is None:
            client = mlflow_client(ctx.tracking_uri)
            run_id = retry(
                lambda: find_trial_run(client, ctx, trial_id), budget_s=outage_wait_s(), what="finding the trial's run"
            )
        if run_id:
            run = cls.reopen(ctx, run_id, tags)
        else:
            run = cls.create(ctx, cfg, trial_id, mask, sites_csv, tags, record, summary, name)
        run._requeue(unsent or [])
        if run_id and record:
            run.log_record(record)
        return run

    @classmethod
    def create(
        cls,
        ctx: SweepContext,
        cfg: TrialConfig,
        trial_id: str,
        mask: str,
        sites_csv: str | None,
        extra_tags: dict[str, str] | None = None,
        record: dict[str, float] | None = None,
        summary: str | None = None,
        name: str | None = None,
    ) -> "TrialRun":
        """A new run; ``name``: its run name (default ``run_name``: the trial's activation, mask and id)."""
        client = mlflow_client(ctx.tracking_uri)
        tags = {
            **ctx.tags,
            "mlflow.parentRunId": ctx.parent_run_id,
            "sweep": ctx.sweep_name,
            "trial_id": trial_id,
            "mask": mask,
            "status": "running",
            "model": cfg.model,
            "dataset": cfg.dataset,
            "insert_act": cfg.insert_act,
            "policy": cfg.policy_spec,
            **(extra_tags or {}),
        }

        attempts = 0

        def create_once() -> tuple[str, str | None]:  # a retry after a lost answer must not create a second run
            nonlocal attempts
            attempts += 1
            if attempts > 1 and (found := find_trial_run(client, ctx, trial_id)):
                return found, None
            title = name or run_name(cfg, mask, trial_id)
            info = client.create_run(ctx.experiment_id, run_name=title, tags=tags).info
            return info.run_id, info.artifact_uri

        wait = outage_wait_s()
        run_id, artifact_uri = retry(create_once, budget_s=wait, what="creating the trial's run")
        # new: it holds nothing yet
        run = cls(client, run_id, logged_through=0, logged_keys=set(), artifact_uri=artifact_uri)
        params = [Param(k, str(v)) for k, v in cfg.params().items()]
        metrics = run._not_yet_logged(record or {})  # with the last params: one call less
        for i in range(0, len(params), _BATCH):
            last = i + _BATCH >= len(params)
            retry(
                lambda: client.log_batch(run_id, params=params[i : i + _BATCH], metrics=metrics if last else []),
                budget_s=wait,
                what="logging params",
            )
        with tempfile.TemporaryDirectory() as files:
            (Path(files) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
            if sites_csv is not None:  # None: the network was never built (the trial failed before)
                (Path(files) / "sites.csv").write_text(sites_csv, encoding="utf-8")
            if summary is not None:
                (Path(files) / "model_summary.txt").write_text(summary, encoding="utf-8")
            run.log_files(files, wait)
        return run

    @classmethod
    def reopen(cls, ctx: SweepContext, run_id: str, extra_tags: dict[str, str] | None = None) -> "TrialRun":
        client = mlflow_client(ctx.tracking_uri)
        tags = [RunTag(k, v) for k, v in {"status": "running", **(extra_tags or {})}.items()]

        def reopen_once() -> int:
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=tags)
            return max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)

        logged_through = retry(reopen_once, budget_s=outage_wait_s(), what="reopening the trial's run")
        return cls(client, run_id, logged_through=logged_through)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log one epoch's metrics in one batch, at ``step=epoch``; epochs the run already holds are skipped.
        During an outage the batch is queued and this returns: training goes on."""
        if epoch <= self.logged_through:
            return
        now = int(time.time() * 1000)
        self._queue(epoch, [Metric(k, float(v), now, epoch) for k, v in metrics.items()])
        self.flush(epoch_retry_s())

    def _queue(self, epoch: int, batch: list[Metric]) -> None:
        self.unsent.append((epoch, batch))
        self.logged_through = epoch
        if self.logged_keys is not None:
            self.logged_keys.update(m.key for m in batch)

    def flush(self, budget_s: float) -> bool:
        """Send the queued batches in order; False (and the rest kept) if the server is still away after
        ``budget_s``."""
        deadline = time.monotonic() + budget_s
        while self.unsent:
            epoch, batch = self.unsent[0]
            try:
                retry(
                    lambda: log_metrics(self.client, self.run_id, batch),
                    budget_s=max(0.0, deadline - time.monotonic()),
                    what=f"logging epoch {epoch}",
                )
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning(
                    "MLflow is unreachable (%s); %d epoch(s) queued for run %s, sent when it is back",
                    str(exc).splitlines()[0][:200],
                    len(self.unsent),
                    self.run_id,
                )
                return False
            self.unsent.pop(0)
        return True

    def unsent_state(self) -> list:
        """The queue in plain types, for the trial checkpoint (``open(..., unsent=...)`` takes it back)."""
        return [(epoch, [(m.key, m.value, m.timestamp, m.step) for m in batch]) for epoch, batch in self.unsent]

    def _requeue(self, state: list) -> None:
        """Queue a checkpoint's unsent batches the run does not hold yet (it may have got them before the restart)."""
        for epoch, rows in state:
            if epoch > self.logged_through:
                self._queue(epoch, [Metric(*row) for row in rows])
        if self.unsent:
            self.flush(epoch_retry_s())

    def log_record(self, record: dict[str, float]) -> None:
        """End-of-trial style metrics known early (step 0), e.g. the deploy form's params_m, flops_g, latency_ms;
        those the run already holds (a restarted trial) are not logged again."""
        wait, what = outage_wait_s(), "logging the trial's record"
        batch = retry(lambda: self._not_yet_logged(record), budget_s=wait, what=what)
        retry(lambda: log_metrics(self.client, self.run_id, batch), budget_s=wait, what=what)

    def _not_yet_logged(self, values: dict[str, float]) -> list[Metric]:
        """``values`` as step-0 metrics, less those the run holds (a restarted trial may have logged them); counted
        as logged. Built once and then resent as is: a retried batch is the same rows (same timestamp), not new ones."""
        if self.logged_keys is None:
            self._look_up()
        batch = record_metrics(values, self.logged_keys)
        self.logged_keys.update(values)
        return batch

    def _look_up(self) -> None:
        """What a reopened run learns from the store, both in one ``get_run``: the metric keys it holds (with those
        still queued) and its artifact location. A run this trial created knows both."""
        run = self.client.get_run(self.run_id)
        if self.logged_keys is None:
            self.logged_keys = set(run.data.metrics) | {m.key for _, batch in self.unsent for m in batch}
        self.artifact_uri = run.info.artifact_uri

    def log_files(self, folder: str, budget_s: float) -> None:
        """Every file in ``folder`` as an artifact at the run's root, in one call."""

        def log_once() -> None:
            if self.artifact_uri is None:
                self._look_up()
            artifact_repository(self.client, self.artifact_uri).log_artifacts(folder)

        retry(log_once, budget_s=budget_s, what=f"logging {', '.join(sorted(os.listdir(folder)))}")

    def finish(self, status: str, final: dict[str, float], reason: str = "", files: str | None = None) -> None:
        """End-of-trial metrics, the files in ``files`` (a folder), the status tag and the run status; the driver
        draws the trial's figures afterwards (orchestrator/figures.py). Waits out an outage (``outage_wait_s``):
        what is queued is sent first."""
        wait = outage_wait_s()
        if not self.flush(wait):
            raise ConnectionError(
                f"MLflow stayed unreachable for {wait:.0f} s; {len(self.unsent)} epoch(s) of run "
                f"{self.run_id} were not sent (a retried trial sends them from its checkpoint)"
            )
        if files:
            self.log_files(files, wait)
        # not twice: the record logged at the start, or all of it if the trial died after an earlier finish()
        final_metrics = retry(lambda: self._not_yet_logged(final), budget_s=wait, what="reading the run's metrics")
        retry(
            lambda: end(self.client, self.run_id, status, reason, final_metrics), budget_s=wait, what="ending the run"
        )


def record_metrics(values: dict[str, float], logged_keys) -> list[Metric]:
    """``values`` as the once-per-trial record, at step 0, less the keys in ``logged_keys`` (those a run holds
    already)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if k not in logged_keys]


def artifact_repository(client: MlflowClient, artifact_uri: str):
    """The artifact store at a run's ``artifact_uri`` (from ``create_run`` or ``get_run``): the client's
    ``log_artifact(s)``/``download_artifacts`` would ask the tracking store for the run again to find it."""
    return get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri)


def find_trial_run(client: MlflowClient, ctx: SweepContext, trial_id: str) -> str | None:
    runs = client.search_runs(
        [ctx.experiment_id],
        f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and tags.trial_id = '{trial_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric], tags: list[RunTag] = ()) -> None:
    """``metrics`` and ``tags`` in as few ``log_batch`` calls as MLflow's limits allow (the tags go with the last)."""
    per_call = _METRICS - len(tags)
    for i in range(0, max(1, len(metrics)), per_call):
        last = i + per_call >= len(metrics)
        if metrics[i : i + per_call] or (last and tags):
            client.log_batch(run_id, metrics=metrics[i : i + per_call], tags=list(tags) if last else [])


def end(
    client: MlflowClient,
    run_id: str,
    status: str,
    reason: str = "",
    metrics: list[Metric] = (),
    tags: dict[str, str] | None = None,
) -> None:
    """The run's last metrics (if any) with its status tags in one batch, then its MLflow status."""
    tags = (
        [RunTag("status", status)]
        + ([RunTag("status_reason", reason[:5000])] if reason else [])
        + [RunTag(k, v) for k, v in (tags or {}).items()]
    )
    log_metrics(client, run_id, list(metrics), tags)
    client.set_terminated(run_id, RUN_STATUS[status])


def error_line(exc: BaseException) -> str:
    """An exception in one line, as the console summary and the run's ``error`` tag show it."""
    lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return lines[0][:1000] if lines else type(exc).__name__


def fail(client: MlflowClient, run_id: str, exc: BaseException) -> None:
    """End a trial's run as FAILED because of ``exc``: tag ``error`` (one line) and ``error.txt`` (the traceback)."""
    client.log_text(run_id, "".join(traceback.format_exception(exc)), "error.txt")
    line = error_line(exc)
    end(client, run_id, "failed", line, tags={"error": line})


__all__ = [
    "SweepContext",
    "TrialRun",
    "act_metrics",
    "artifact_repository",
    "end",
    "error_line",
    "fail",
    "find_trial_run",
    "record_metrics",
    "run_name",
]
