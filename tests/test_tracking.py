"""In-trial MLflow logging against a real SQLite store, read back with MlflowClient."""
from mlflow.tracking import MlflowClient

from trainables.config import TrialConfig
from trainables.metrics import act_metrics, parse_act_metric_key
from trainables.tracking import SweepContext, TrialRun, act_history_from_run


def _context(uri):
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = client.create_run(exp, run_name="parent")
    return SweepContext(uri, exp, parent.info.run_id, "t", {"sweep_file_sha256": "abc"})


def _history(epochs):
    return [{"epoch": e, "state": {"stages.0.act": {"theta": [1 + e / 10, 1 - e / 10], "omega": [e / 100, -e / 100]}}}
            for e in range(1, epochs + 1)]


def test_each_epoch_is_logged_once_across_a_reopen(tracking_uri):
    ctx = _context(tracking_uri)
    cfg = TrialConfig(n=2, policy="mask", mask="0100")
    run = TrialRun.create(ctx, cfg, "trial_1", "0100", "index,path\n")
    for epoch in (1, 2, 3):
        run.log_epoch(epoch, {"train_loss": 1.0 / epoch, "val_acc": 10.0 * epoch})
    # the trial dies after logging epoch 3 but before its checkpoint; it restarts from epoch 2's checkpoint
    reopened = TrialRun.reopen(ctx, run.run_id)
    assert reopened.run_id == run.run_id and reopened.logged_through == 3
    for epoch in (3, 4):
        reopened.log_epoch(epoch, {"train_loss": 9.0, "val_acc": 10.0 * epoch})
    client = MlflowClient(tracking_uri)
    steps = [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train_loss")]
    assert steps == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 9.0)]
    got = client.get_run(run.run_id)
    assert got.info.status == "RUNNING"
    assert got.data.tags["mlflow.parentRunId"] == ctx.parent_run_id
    assert got.data.tags["mask"] == "0100" and got.data.tags["sweep_file_sha256"] == "abc"
    assert got.data.params["n"] == "2" and got.data.params["mask"] == "0100"
    assert got.info.run_name == "digits_cnn-lslu-n2-0100-trial_1"
    assert len(client.search_runs([ctx.experiment_id], "tags.trial_id = 'trial_1'")) == 1


def test_finish_logs_artifacts_and_status(tracking_uri, tmp_path):
    ctx = _context(tracking_uri)
    run = TrialRun.create(ctx, TrialConfig(), "trial_2", "1111", "index,path\n")
    history = _history(3)
    for entry in history:
        run.log_epoch(entry["epoch"], act_metrics(entry["state"]))
    run.finish("completed", {"params_m": 0.1}, "title")
    client = MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["status"] == "completed"
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"config.yaml", "sites.csv", "sites.png", "theta_omega.csv",
                                                                  "theta_omega.png", "learning_curves.png"}
    csv_text = open(client.download_artifacts(run.run_id, "theta_omega.csv", str(tmp_path))).read().splitlines()
    assert csv_text[0] == "epoch,site,i,theta,omega"
    assert csv_text[1] == "1,stages.0.act,1,1.1,0.01" and len(csv_text) == 1 + 3 * 2
    assert got.data.metrics["theta/stages.0.act/2"] == 0.7
    # the driver rebuilds the same history from the run's metrics
    assert act_history_from_run(client, run.run_id) == history


def test_act_metric_keys_round_trip():
    assert act_metrics({"layer1.0.act1": {"theta": [2.0], "omega": [0.5]}}) == {"theta/layer1.0.act1/1": 2.0, "omega/layer1.0.act1/1": 0.5}
    assert parse_act_metric_key("omega/layer1.0.act1/12") == ("omega", "layer1.0.act1", 12)
    assert parse_act_metric_key("val_acc") is None and parse_act_metric_key("theta/x") is None


def test_a_trial_restarted_without_checkpoint_finds_its_run(tracking_uri):
    ctx = _context(tracking_uri)
    cfg = TrialConfig()
    first = TrialRun.open(ctx, cfg, "trial_3", "1111", "")
    first.log_epoch(1, {"train_loss": 1.0})
    again = TrialRun.open(ctx, cfg, "trial_3", "1111", "")  # no run id: the trial had no checkpoint yet
    assert again.run_id == first.run_id and again.logged_through == 1
    other = TrialRun.open(ctx, cfg, "trial_4", "1111", "")
    assert other.run_id != first.run_id and other.logged_through == 0
