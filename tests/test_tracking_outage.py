"""A real ``mlflow server`` process killed and restarted while a trial trains on the local Ray: the trial goes on,
and once the server is back every epoch is in its run exactly once."""

import textwrap

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from cluster.preflight import ClusterError
from orchestrator.driver import run_sweep
from search_spaces.schema import parse_sweep
from services import free_port, mlflow_server

pytestmark = pytest.mark.slow
EPOCHS = 5
SPEC = f"""
name: outage
trial: {{epochs: {EPOCHS}, n: 1, batch_size: 128, warmup_epochs: 0, lr: 0.004}}
search: {{num_samples: 1, scheduler: none}}
"""


class BounceServer(Callback):
    """Kills the server (SIGKILL, as in a crash) at the trial's first result and starts it again at its second.
    Starting takes the server tens of seconds, so the trial logs the next epochs into a dead port meanwhile."""

    def __init__(self, server):
        self.server, self.events = server, []

    def __getstate__(self):  # Tune pickles callbacks with its state; the server process stays here
        return {"events": self.events}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result["training_iteration"] == 1 and not self.events:
            self.server.kill()
            self.events.append("killed")
        elif result["training_iteration"] == 2 and self.events == ["killed"]:
            self.server.start(wait=False)
            self.events.append("restarted")


def _sweep(tmp_path):
    return parse_sweep(yaml.safe_load(textwrap.dedent(SPEC)), SPEC, str(tmp_path / "outage.yaml"))


def test_a_tracking_server_that_does_not_answer_is_refused_before_anything_starts(ray_local, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ClusterError) as refused:
        run_sweep(_sweep(tmp_path), tracking_uri=uri, storage=str(tmp_path / "ray"))
    assert refused.value.option == "--tracking-uri"
    assert f"the MLflow server at {uri} does not answer the driver: no answer" in refused.value.message
    assert "cluster/mlflow_server.sh" in refused.value.message
    assert not (tmp_path / "ray").exists()


def test_a_server_outage_mid_trial_loses_no_epoch_and_logs_none_twice(ray_local, tmp_path):
    server = mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path / "server.log"
    ).start()
    bouncer = BounceServer(server)
    try:
        outcome = run_sweep(
            _sweep(tmp_path), tracking_uri=server.uri, storage=str(tmp_path / "ray"), callbacks=(bouncer,)
        )
        assert bouncer.events == ["killed", "restarted"]
        assert [r["status"] for r in outcome.rows] == ["completed"] and outcome.best is not None

        # Tune's record: epochs were queued while the server was down, and all were sent by the end
        unsent = list(outcome.results[0].metrics_dataframe["mlflow_unsent"])
        assert max(unsent) >= 1 and unsent[-1] == 0, unsent

        # what the restarted server's store kept (the trial finished only once it could send everything)
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("outage")
        (child,) = client.search_runs([exp.experiment_id], "tags.trial_id != ''")
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "completed"
        for key in ("train_loss", "val_loss", "val_acc", "theta/stem.act/1"):
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (key, history)
        # the trial's files and the driver's figures, through the server's artifact proxy
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {
            "config.yaml",
            "sites.csv",
            "model_final.pt",
            "theta_omega.csv",
            "theta_omega.png",
            "learning_curves.png",
            "sites.png",
        }
    finally:
        server.stop()
