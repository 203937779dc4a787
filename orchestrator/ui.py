"""Where a researcher looks at a sweep in the MLflow UI, and ``lslu-sweep ui``.

Every sweep saves a *view* on its experiment (MLflow's shared view state, the "Share" button's tag
``mlflow.sharedViewState.<key>``): only that sweep's trials, flat, best first, with the searched values,
status and headline metrics as columns. The links below open it, and a trial's θ/ω figure, directly;
``workflowType=machine_learning`` keeps MLflow 3's UI out of its GenAI pages.
"""

from __future__ import annotations

import json
import signal
import urllib.parse
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from cluster.tracking import resolve_tracking_uri, ui_command
from cluster.ui_server import DEFAULT_PORT, HOST, UiError, UiServer
from orchestrator.experiments import tracking_option
from search_spaces.schema import Sweep
from trainables.mlflow_client import mlflow_client

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
ML_PAGES = "workflowType=machine_learning"
LOCAL_UI = f"http://{HOST}:{DEFAULT_PORT}"  # where `lslu-sweep ui` serves by default


def sweep_view_state(sweep: Sweep, parent_run_id: str) -> dict:
    """The runs-table state of one sweep: its trials only, best first, the columns a researcher compares."""
    metrics = list(dict.fromkeys([*(m for m, _ in sweep.objectives), "val_acc", "val_loss"]))
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        "orderByKey": f"metrics.`{sweep.metric}`",
        "orderByAsc": sweep.mode == "min",
        "selectedColumns": [
            "tags.`status`",
            *(f"metrics.`{m}`" for m in metrics),
            *(f"params.`{k}`" for k in sweep.spec.space),
        ],
    }


def save_sweep_view(client: MlflowClient, experiment_id: str, key: str, sweep: Sweep, parent_run_id: str) -> None:
    client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(sweep_view_state(sweep, parent_run_id)))


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_PAGES}"


def sweep_url(base: str, experiment_id: str, view_key: str) -> str:
    return f"{experiment_url(base, experiment_id)}&viewStateShareKey={urllib.parse.quote(view_key, safe='')}"


def artifact_url(base: str, experiment_id: str, run_id: str, path: str = "theta_omega.png") -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}?{ML_PAGES}"


def ui_base(tracking_uri: str) -> str:
    """A tracking server is its own UI; a local store is served by ``lslu-sweep ui`` (``LOCAL_UI`` by default)."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def sweep_links(base: str, parent: Run) -> list[str]:
    """The lines that point at one sweep: its trials best first, and the θ/ω figure of the best trial that has one
    (``theta_omega_run_id``), or the best trial's learning curves where none has."""
    exp_id, tags = parent.info.experiment_id, parent.data.tags
    lines = [f"  trials, best first:  {sweep_url(base, exp_id, parent.info.run_name)}"]
    best, theta = tags.get("best_trial_run_id"), tags.get("theta_omega_run_id")
    if theta:
        label = "best trial's θ/ω:   " if theta == best else "best LSLU trial's θ/ω:"
        lines.append(f"  {label} {artifact_url(base, exp_id, theta)}")
    elif best:
        lines.append(f"  best trial's curves: {artifact_url(base, exp_id, best, 'learning_curves.png')}")
    lines.append(f"  every sweep of {tags.get('sweep', 'this file')}: {experiment_url(base, exp_id)}")
    return lines


def newest_sweep(client: MlflowClient) -> Run | None:
    """The parent run of the sweep that started last, over every experiment in the store."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments, "tags.sweep_file LIKE '%'", order_by=["attributes.start_time DESC"], max_results=5
    )
    return next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)


def browse_lines(tracking_uri: str, parent: Run) -> list[str]:
    """What the driver prints at the end of a sweep: how to open the UI, and where to look."""
    base = ui_base(tracking_uri)
    if base != LOCAL_UI:
        return sweep_links(base, parent)
    option = tracking_option(tracking_uri)
    return [f"  lslu-sweep ui{option}    (or: {ui_command(tracking_uri)}), then open", *sweep_links(base, parent)]


def serve(tracking_uri: str | None, port: int, echo=print) -> int:
    """``lslu-sweep ui``: serve the store until Ctrl+C, after printing where the newest sweep is.

    Returns the exit code; a missing store or a taken port is a ``UiError`` before anything starts.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if ui_base(uri) != LOCAL_UI:  # a tracking server already serves its UI
        _print_newest(uri, ui_base(uri), echo)
        return 0
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise UiError(
            f"no MLflow store at {uri[len('sqlite:///') :]}: "
            "run a sweep first (make demo, or lslu-sweep run quickstart), "
            "or name the store with --tracking-uri"
        )
    server = UiServer(uri, port).start()
    # stop it as Ctrl+C does
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        echo(f"MLflow UI on {uri}: {server.url}   (Ctrl+C stops it; server log: {server.log})")
        _print_newest(uri, server.url, echo)
        code = server.wait()
        echo(f"error: the MLflow UI exited with status {code}; its log ends:\n{server.log_tail()}")
        return 1
    except KeyboardInterrupt:
        echo("\nstopping the MLflow UI")
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _print_newest(uri: str, base: str, echo) -> None:
    parent = newest_sweep(mlflow_client(uri))
    if parent is None:
        echo(f"no sweep in {uri} yet; run one with: lslu-sweep run quickstart")
        return
    experiment = parent.data.tags.get("sweep", parent.info.experiment_id)
    echo(f"newest sweep {parent.info.run_name} (experiment {experiment}):")
    for line in sweep_links(base, parent):
        echo(line)
