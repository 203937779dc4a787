"""Where the MLflow UI shows a sweep: the saved view, the links, the newest sweep, and ``lslu-sweep ui``."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from cluster.ui_server import UiError, UiServer, free_port
from orchestrator.progress import SweepReporter
from orchestrator.runs import open_parent_run
from orchestrator.ui import (
    VIEW_TAG_PREFIX,
    artifact_url,
    browse_lines,
    newest_sweep,
    serve,
    sweep_url,
    sweep_view_state,
    ui_base,
)
from search_spaces.schema import load_sweep

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quickstart():
    return load_sweep("quickstart")


def _child(client, ctx, trial_id, value, start):
    run = client.create_run(
        ctx.experiment_id,
        run_name=f"trial-{trial_id}",
        start_time=start,
        tags={"mlflow.parentRunId": ctx.parent_run_id, "trial_id": trial_id, "sweep": ctx.sweep_name},
    )
    client.log_metric(run.info.run_id, "best_val_acc", value)
    return run.info.run_id


def test_the_saved_view_selects_one_sweeps_trials_best_first(tracking_uri, quickstart):
    client = MlflowClient(tracking_uri)
    ctx = open_parent_run(tracking_uri, quickstart, "quickstart-20260101-000000", smoke_test=False)
    other = open_parent_run(tracking_uri, quickstart, "quickstart-20260102-000000", smoke_test=False)
    assert other.experiment_id == ctx.experiment_id
    mine = {_child(client, ctx, t, v, 1000 + i): v for i, (t, v) in enumerate([("a", 91.0), ("b", 99.5), ("c", 80.25)])}
    _child(client, other, "d", 99.9, 2000)  # another sweep's trial, in the same experiment

    state = json.loads(client.get_experiment(ctx.experiment_id).tags[VIEW_TAG_PREFIX + "quickstart-20260101-000000"])
    assert state == sweep_view_state(quickstart, ctx.parent_run_id)
    # insert_act, n, dropout, lr, mask: in the file's order
    searched = [f"params.`{key}`" for key in quickstart.spec.space]
    assert searched[-1] == "params.`mask`" and len(searched) >= 4
    assert state["selectedColumns"] == [
        "tags.`status`",
        "metrics.`best_val_acc`",
        "metrics.`val_acc`",
        "metrics.`val_loss`",
        *searched,
    ]
    # the UI runs the view's filter and order through MLflow's own search: the same query here
    order = f"{state['orderByKey']} {'ASC' if state['orderByAsc'] else 'DESC'}"
    found = client.search_runs([ctx.experiment_id], state["searchFilter"], order_by=[order])
    assert [r.info.run_id for r in found] == sorted(mine, key=mine.get, reverse=True)


def test_newest_sweep_is_the_last_parent_run_started_in_any_experiment(tracking_uri, quickstart, tmp_path):
    client = MlflowClient(tracking_uri)
    assert newest_sweep(client) is None
    first = open_parent_run(tracking_uri, quickstart, "quickstart-20260101-000000", smoke_test=False)
    time.sleep(0.01)
    text = (REPO / "search_spaces" / "quickstart.yaml").read_text().replace("name: quickstart", "name: other")
    (tmp_path / "other.yaml").write_text(text)
    second = open_parent_run(
        tracking_uri, load_sweep(str(tmp_path / "other.yaml")), "other-20260101-000000", smoke_test=False
    )
    assert second.experiment_id != first.experiment_id
    _child(client, first, "late", 50.0, int(time.time() * 1000) + 60_000)  # a trial that started later is no sweep
    client.create_run(first.experiment_id, run_name="a run of someone else's")
    assert newest_sweep(client).info.run_id == second.parent_run_id


def test_links_open_the_sweep_view_and_the_theta_omega_figure(tracking_uri):
    base = "http://127.0.0.1:5000"
    assert sweep_url(base, "3", "qs-1 x") == (
        f"{base}/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=qs-1%20x"
    )
    assert artifact_url(base, "3", "abc") == (
        f"{base}/#/experiments/3/runs/abc/artifacts/theta_omega.png?workflowType=machine_learning"
    )
    assert ui_base("https://mlflow.lab.example/") == "https://mlflow.lab.example"
    assert ui_base(tracking_uri) == base


def test_browse_lines_say_how_to_open_the_ui(tracking_uri, quickstart, monkeypatch, tmp_path):
    ctx = open_parent_run(tracking_uri, quickstart, "quickstart-20260101-000000", smoke_test=False)
    client = MlflowClient(tracking_uri)
    client.set_tag(ctx.parent_run_id, "best_trial_run_id", "feed")
    parent = client.get_run(ctx.parent_run_id)
    # no trial with θ/ω (no LSLU sites in any): the best trial's learning curves; then the best trial's θ/ω, or the
    # best LSLU trial's where the best has none
    curves = artifact_url("http://127.0.0.1:5000", ctx.experiment_id, "feed", "learning_curves.png")
    assert f"  best trial's curves: {curves}" in browse_lines(tracking_uri, parent)
    client.set_tag(ctx.parent_run_id, "theta_omega_run_id", "beef")
    theta = artifact_url("http://127.0.0.1:5000", ctx.experiment_id, "beef")
    assert f"  best LSLU trial's θ/ω: {theta}" in browse_lines(tracking_uri, client.get_run(ctx.parent_run_id))
    client.set_tag(ctx.parent_run_id, "theta_omega_run_id", "feed")
    parent = client.get_run(ctx.parent_run_id)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the store is not the working directory's: its URI is named
    lines = browse_lines(tracking_uri, parent)
    assert lines[0].startswith(f"  lslu-sweep ui --tracking-uri {tracking_uri}")
    assert any(artifact_url("http://127.0.0.1:5000", ctx.experiment_id, "feed") in line for line in lines)
    monkeypatch.chdir(tmp_path)  # tracking_uri is ./mlruns.db here: the default store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert browse_lines(tracking_uri, parent)[0].startswith(
        "  lslu-sweep ui    (or: mlflow ui --backend-store-uri sqlite:///mlruns.db "
    )
    server_lines = browse_lines("http://mlflow.lab:5000", parent)
    assert server_lines[0].startswith("  trials, best first:  http://mlflow.lab:5000/#/experiments/")


def test_ui_refuses_a_missing_store_and_a_taken_port(tmp_path):
    with pytest.raises(UiError, match="no MLflow store at .*nothing.db"):
        serve(f"sqlite:///{tmp_path / 'nothing.db'}", 0)
    assert not (tmp_path / "nothing.db").exists()  # and did not create an empty one
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UiError, match=f"port {taken.getsockname()[1]} .* is in use"):
            UiServer(f"sqlite:///{tmp_path / 'x.db'}", taken.getsockname()[1]).start()


def _trial(trial_id, status, acc=None):
    return SimpleNamespace(
        trial_id=trial_id, status=status, last_result={"best_val_acc": acc} if acc is not None else {}
    )


def test_progress_table_is_reprinted_only_when_something_changed(quickstart):
    reporter = SweepReporter(quickstart, min_interval_s=0.0, heartbeat_s=3600)
    assert reporter._metric_columns == {
        "epoch": "epoch",
        "val_acc": "val_acc",
        "best_val_acc": "best_val_acc",
        "mask": "mask",
    }
    # every searched key but the mask, which is searched per site: its column is the folded mask
    assert reporter._parameter_columns == [key for key in quickstart.spec.space if key != "mask"]
    assert {"n", "dropout", "lr"} <= set(reporter._parameter_columns)
    trials = [_trial("a", "RUNNING", 50.0), _trial("b", "PENDING")]
    assert reporter.should_report(trials)
    assert not reporter.should_report(trials)  # nothing changed
    trials[1] = _trial("b", "RUNNING", 60.0)  # a trial started and leads
    assert reporter.should_report(trials)
    trials[0].last_result["best_val_acc"] = 55.0  # a new value, same statuses, same leader: no new table
    assert not reporter.should_report(trials)
    assert not reporter.should_report(trials, done=True)  # the driver prints the final summary itself
    slow = SweepReporter(quickstart, min_interval_s=3600, heartbeat_s=3600)
    assert slow.should_report(trials)
    trials[0].status = "TERMINATED"
    assert not slow.should_report(trials)  # changed, but too soon after the last table
    beat = SweepReporter(quickstart, min_interval_s=3600, heartbeat_s=0.0)
    assert beat.should_report(trials) and beat.should_report(trials)  # heartbeat: even without a change


@pytest.mark.slow
def test_ui_command_serves_the_store_and_stops_on_ctrl_c(tracking_uri, quickstart, tmp_path):
    ctx = open_parent_run(tracking_uri, quickstart, "quickstart-20260101-000000", smoke_test=False)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}  # the server log lands here
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "ui", "--tracking-uri", tracking_uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "every sweep of" in line:
                break
        text = "".join(lines)
        assert f"MLflow UI on {tracking_uri}: http://127.0.0.1:{port}" in text, text
        assert "newest sweep quickstart-20260101-000000" in text
        assert sweep_url(f"http://127.0.0.1:{port}", ctx.experiment_id, "quickstart-20260101-000000") in text
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={ctx.parent_run_id}"
        with urllib.request.urlopen(api, timeout=10) as response:
            assert json.load(response)["run"]["info"]["run_name"] == "quickstart-20260101-000000"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopping the MLflow UI" in proc.stdout.read()
        # the server's output went to its log
        assert "GET /health" in next(tmp_path.glob("lslu-sweep-mlflow-ui-*.log")).read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server and every process it started are gone: the port is free again
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.2)
    else:
        pytest.fail(f"something still listens on port {port} after Ctrl+C")
