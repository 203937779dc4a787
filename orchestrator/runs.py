"""The driver's side of MLflow: the sweep's experiment and parent run, and closing runs trials left open."""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path

import torch
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from cluster.tracking import default_artifact_location
from orchestrator.ui import save_sweep_view
from search_spaces.schema import Sweep
from trainables.mlflow_client import mlflow_client
from trainables.retry import retry
from orchestrator.figures import figure_queue
from trainables.metrics import record_of
from trainables.tracking import SweepContext, end, record_metrics
from trainables.trainable import weights_from_checkpoint

log = logging.getLogger(__name__)


def git_commit() -> str | None:
    """The commit of the lslu-sweep checkout the driver runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment named after the sweep file, created (or restored from the bin) on first use."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def open_stores(tracking_uri: str, study_storage: str | None) -> None:
    """The tracking store and the study's storage opened once, their schemas made (MLflow's and Optuna's migrations
    take seconds on a new SQLite file): what later opens them finds them ready. An error is left for that opening."""
    try:
        mlflow_client(tracking_uri).search_experiments(max_results=1)
        if study_storage:
            import optuna

            optuna.storages.RDBStorage(study_storage)
    except Exception:  # the sweep's own opening reports it, with its context
        pass


def open_parent_run(
    tracking_uri: str, sweep: Sweep, run_name: str, smoke_test: bool, extra_tags: dict[str, str] | None = None
) -> SweepContext:
    """The sweep's parent run; ``extra_tags`` are the driver's extra ones (where the Optuna study is)."""
    client = mlflow_client(tracking_uri)
    exp_id = experiment_id(client, sweep.name, tracking_uri)
    shared_tags = {"sweep_file_sha256": sweep.sha256}
    commit = git_commit()
    if commit:
        shared_tags["mlflow.source.git.commit"] = commit
    tags = {
        **shared_tags,
        "sweep": sweep.name,
        "sweep_file": Path(sweep.file).name,
        "smoke_test": str(smoke_test).lower(),
        "mlflow.note.content": f"Sweep `{sweep.name}`: one child run per trial. Artifacts: "
        "`results.csv` (one row per trial, best first), "
        "`report.md` (grouped, mean ± std over seeds), `parallel_coordinates.png`, "
        "`param_importance.png`, `best_config.yaml`; "
        "with two objectives `pareto.png` and `pareto.csv`; "
        "with a searched mask `site_importance.csv`.",
    }
    tags.update(extra_tags or {})
    if sweep.overrides:
        tags["overrides"] = " ".join(sweep.overrides)  # the --set items; sweep.yaml holds the file as overridden
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    s = sweep.spec.search
    params = {
        "algorithm": s.algorithm,
        "metric": ",".join(m for m, _ in sweep.objectives),
        "mode": ",".join(mode for _, mode in sweep.objectives),
        "num_samples": s.num_samples,
        "max_sites": s.max_sites,
        "max_concurrent": s.max_concurrent,
        "scheduler": s.scheduler,
        "seed": s.seed,
        "searched": ",".join(sweep.spec.space),
        "site_count": sweep.site_count,
        "cpu_per_trial": sweep.spec.resources.cpu,
        "gpu_per_trial": sweep.spec.resources.gpu,
    }
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(run.info.run_id, sweep.source, "sweep.yaml")
    save_sweep_view(client, exp_id, run_name, sweep, run.info.run_id)
    return SweepContext(tracking_uri, exp_id, run.info.run_id, sweep.name, shared_tags)


def close_run(
    client: MlflowClient,
    run_id: str,
    status: str,
    reason: str = "",
    checkpoint_dir: str | None = None,
    record: dict[str, float] | None = None,
) -> bool:
    """End a trial's run the trial itself could not end (stopped by the scheduler, or crashed); a stopped trial's
    run gets the weights of its last checkpoint and ``record``, the end-of-trial record of its last result (what
    the run does not hold yet). Its figures come from the figure queue, as every trial's."""
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    if status == "stopped_early" and checkpoint_dir:
        with tempfile.TemporaryDirectory() as d:
            torch.save(weights_from_checkpoint(checkpoint_dir), Path(d) / "model_final.pt")
            client.log_artifact(run_id, str(Path(d) / "model_final.pt"))
    end(client, run_id, status, reason, record_metrics(record or {}, run.data.metrics))
    return True


def close_leftover_runs(ctx: SweepContext) -> int:
    """Mark every child run still RUNNING at the end of the sweep as failed; returns how many."""
    client = mlflow_client(ctx.tracking_uri)
    runs = client.search_runs(
        [ctx.experiment_id], f"tags.`mlflow.parentRunId` = '{ctx.parent_run_id}' and attributes.status = 'RUNNING'"
    )
    for run in runs:
        end(client, run.info.run_id, "failed", "the sweep ended while this trial's run was still open")
    return len(runs)


class RunCloser(Callback):
    """Ends the MLflow run of a trial Tune stopped (ASHA) or gave up on, as soon as that happens."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def __getstate__(self):  # Tune checkpoints callbacks with the experiment: keep the client out
        return {"tracking_uri": self.tracking_uri, "_client": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, "stopped_early", "stopped by the scheduler")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, "failed", f"trial errored; see {trial.error_file or 'the Ray Tune log'}")

    def _close(self, trial, status: str, reason: str) -> None:
        result = trial.last_result or {}
        run_id, record = result.get("mlflow_run_id"), record_of(result) if status == "stopped_early" else None
        if run_id:

            def close() -> None:
                if trial.checkpoint is None:
                    close_run(self.client, run_id, status, reason, record=record)
                else:
                    with trial.checkpoint.as_directory() as checkpoint_dir:
                        close_run(self.client, run_id, status, reason, checkpoint_dir, record)

            try:
                retry(close, budget_s=10, what=f"closing MLflow run {run_id}")
            except Exception as exc:  # a busy SQLite store or a server outage must not stop the sweep
                log.warning("could not close MLflow run %s: %s (the end of the sweep closes it)", run_id, exc)
            figure_queue(self.tracking_uri).submit(run_id)  # drawn in the background, for every trial alike
