"""Whole sweeps on a real local Ray, logged to a real SQLite MLflow store and read back with MlflowClient."""
import json
import os
import re
import signal
import textwrap

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator.cli import main
from orchestrator.driver import resume_sweep, run_sweep
from search_spaces.schema import load_sweep, parse_sweep

pytestmark = pytest.mark.slow
TRIAL_ARTIFACTS = {"config.yaml", "sites.csv", "sites.png", "theta_omega.csv", "theta_omega.png", "learning_curves.png"}


def _runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _assert_each_epoch_once(client, run, epochs):
    for key in ("train_loss", "val_loss", "val_acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, key, steps)


def test_quickstart_smoke_sweep_end_to_end(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "quickstart", "--smoke-test"]) == 0
    out = capsys.readouterr().out
    assert "best trial" in out and "mlflow ui --backend-store-uri sqlite:///mlruns.db " in out
    # the console: Tune's trial table with the searched values, one line per trial epoch, no per-trial config boxes
    assert "== Status ==" in out and re.search(r"\|\s+n \|\s+dropout \|\s+lr \|", out)
    assert re.search(r"trial \w+ epoch 1/2: train_loss [\d.]+  val_loss [\d.]+  val_acc [\d.]+% \(best [\d.]+%\)", out)
    assert "started with configuration" not in out and "Checkpoint successfully created" not in out
    assert "Result logdir" not in out

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client, parents, children = _runs(uri, "quickstart")
    assert len(parents) == 1 and len(children) == 4  # smoke test: <= 4 trials
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["smoke_test"] == "true"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "best_config.yaml", "sweep.yaml",
                                                                           "parallel_coordinates.png"}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status in ("FINISHED", "KILLED")  # completed, or stopped by ASHA
        assert child.data.tags["status"] in ("completed", "stopped_early")
        assert (child.info.status == "KILLED") == (child.data.tags["status"] == "stopped_early")
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == TRIAL_ARTIFACTS
        epochs = len(client.get_metric_history(child.info.run_id, "val_acc"))
        _assert_each_epoch_once(client, child, epochs)
        mask = child.data.params["mask"]
        assert child.data.tags["mask"] == mask and len(mask) == 4
        n = int(child.data.params["n"])
        theta_keys = {k for k in child.data.metrics if k.startswith("theta/")}
        assert len(theta_keys) == n * mask.count("1")  # theta/<site>/<i> for every LSLU site
        for key in theta_keys:
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == list(range(1, epochs + 1))

    results = client.download_artifacts(parent.info.run_id, "results.csv", str(tmp_path))
    lines = open(results).read().splitlines()
    assert len(lines) == 1 + 4 and "config.mask" in lines[0] and "best_val_acc" in lines[0]
    best_file = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    best = load_sweep(best_file)  # directly runnable
    assert best.spec.search.num_samples == 1 and not best.spec.space and best.base.policy == "mask"
    assert parent.data.tags["best_trial_run_id"] in {c.info.run_id for c in children}
    # the sweep's saved UI view lists exactly its trials, best first
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[f"mlflow.sharedViewState.{parent.info.run_name}"])
    listed = client.search_runs([parent.info.experiment_id], view["searchFilter"], order_by=[f"{view['orderByKey']} DESC"])
    assert {r.info.run_id for r in listed} == {c.info.run_id for c in children}
    accs = [r.data.metrics["best_val_acc"] for r in listed]
    assert accs == sorted(accs, reverse=True)


SPEC = """
name: {name}
trial: {{epochs: 4, n: 1, batch_size: 128, warmup_epochs: 0}}
space:
  lr: {{type: float, low: 3.0e-3, high: 6.0e-3}}
  mask: {{type: sites}}
search: {{num_samples: {samples}, max_concurrent: 2, scheduler: none, max_failures: 1, seed: 1}}
"""


def _sweep(tmp_path, name, samples):
    text = textwrap.dedent(SPEC.format(name=name, samples=samples))
    (tmp_path / f"{name}.yaml").write_text(text)
    return parse_sweep(yaml.safe_load(text), text, str(tmp_path / f"{name}.yaml"))


class KillTrialProcess(Callback):
    """SIGKILLs the worker process of the first trial whose epoch-2 checkpoint Tune has registered: a real crash, once."""

    def __init__(self, marker):
        self.marker, self.recovered = str(marker), []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result
        if result["training_iteration"] == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").write(trial.trial_id)
            os.kill(result["pid"], signal.SIGKILL)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recovered.append(trial.trial_id)


def test_killed_trial_continues_from_its_checkpoint_in_the_same_run(ray_local, tmp_path, tracking_uri):
    killer = KillTrialProcess(tmp_path / "killed")
    outcome = run_sweep(_sweep(tmp_path, "crash", 2), tracking_uri=tracking_uri, storage=str(tmp_path / "ray"), callbacks=(killer,))
    killed = (tmp_path / "killed").read_text()
    assert killer.recovered == [killed]
    assert [r["status"] for r in outcome.rows] == ["completed", "completed"]

    client, parents, children = _runs(tracking_uri, "crash")
    assert len(parents) == 1 and len(children) == 2  # no second run for the restored trial
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "completed"
        _assert_each_epoch_once(client, child, 4)
    # Tune's own record of the killed trial: epochs 1, 2, then 3, 4 after the restore, not 1, 2 again
    result = next(r for r in outcome.results if r.metrics["trial_id"] == killed)
    assert list(result.metrics_dataframe["epoch"]) == [1, 2, 3, 4]


class InterruptDriver(Callback):
    """Sends the driver SIGINT (Ctrl+C) once the second trial has reported, once across restores."""

    def __init__(self, marker):
        self.marker = str(marker)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if len(trials) >= 2 and result["training_iteration"] == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").write("sent")
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_sweep_resumes_with_the_same_runs(ray_local, tmp_path, tracking_uri):
    storage = str(tmp_path / "ray")
    first = run_sweep(_sweep(tmp_path, "stopgo", 3), tracking_uri=tracking_uri, storage=storage,
                      callbacks=(InterruptDriver(tmp_path / "sent"),))
    assert first.interrupted and first.best is None
    client, parents, _ = _runs(tracking_uri, "stopgo")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["sweep_status"] == "interrupted"

    second = resume_sweep("stopgo", storage=storage, tracking_uri=tracking_uri)
    assert not second.interrupted and second.name == first.name and second.best is not None
    assert [r["status"] for r in second.rows] == ["completed"] * 3

    client, parents, children = _runs(tracking_uri, "stopgo")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["sweep_status"] == "finished"
    assert len(children) == 3  # one run per trial, across the interruption
    assert len({c.data.tags["trial_id"] for c in children}) == 3
    for child in children:
        assert child.info.status == "FINISHED"
        _assert_each_epoch_once(client, child, 4)
