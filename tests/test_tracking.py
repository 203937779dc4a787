"""In-trial MLflow logging against a real SQLite store, read back with MlflowClient."""

import sqlite3
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from services import free_port

from trainables.mlflow_client import set_sqlite_pragmas, mlflow_client
from trainables.config import TrialConfig
from trainables.metrics import act_metrics, parse_act_metric_key
from orchestrator.trial_plots import theta_omega_rows
from trainables.retry import is_transient, retry
from orchestrator.figures import act_history, draw_trial_figures, run_history, sites_png
from trainables.tracking import SweepContext, TrialRun


def _context(uri):
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = client.create_run(exp, run_name="parent")
    return SweepContext(uri, exp, parent.info.run_id, "t", {"sweep_file_sha256": "abc"})


def _history(epochs):
    return [
        {
            "epoch": e,
            "state": {
                "stages.0.act": {"theta/1": 1 + e / 10, "theta/2": 1 - e / 10, "omega/1": e / 100, "omega/2": -e / 100}
            },
        }
        for e in range(1, epochs + 1)
    ]


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


@pytest.mark.parametrize(
    "cfg, mask, name",
    [
        (TrialConfig(model="mypkg.nets:build", n=2, policy="mask", mask="010"), "010", "nets.build-lslu-n2-010-t1"),
        (
            TrialConfig(model="nets:build", insert_act="tests.plugin_act:SlopeReLU", policy="all"),
            "11",
            "nets.build-plugin_act.SlopeReLU-all-t1",
        ),
        (TrialConfig(model="resnet18", n=2, policy="mask", mask="000"), "000", "resnet18-none-t1"),  # nothing inserted
        (TrialConfig(model="resnet18", n=0, policy="all"), "1111", "resnet18-none-t1"),  # LSLU with n = 0
        (TrialConfig(model="convnext_atto", insert_act="pwlu", policy="none"), "0000", "convnext_atto-none-t1"),
    ],
)
def test_a_run_name_is_short_and_names_only_what_the_trial_inserts(tracking_uri, cfg, mask, name):
    run = TrialRun.create(_context(tracking_uri), cfg, "t1", mask, "index,path\n")
    assert MlflowClient(tracking_uri).get_run(run.run_id).info.run_name == name


def test_a_sqlite_store_is_kept_in_write_ahead_log_mode(tracking_uri, tmp_path):
    """Every process of a sweep opens the store through ``mlflow_client`` first: the SQLite file is switched to
    write-ahead logging (readers are not shut out while a trial writes) and MLflow's connections sync the disk only
    at the log's checkpoints."""
    client = mlflow_client(tracking_uri)
    ctx = SweepContext(tracking_uri, client.create_experiment("t"), "parent", "t")
    with sqlite3.connect(tmp_path / "mlruns.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # SQLite's default: delete
    store = client._tracking_client.store  # the store MLflow logs through, and its connections
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL (SQLite's default: 2, FULL)
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 20000
    # a reader that knows nothing of it sees a trial's epoch while a writer holds the database
    run = TrialRun.create(ctx, TrialConfig(), "trial_w", "1111", "index,path\n")
    run.log_epoch(1, {"train_loss": 1.0})
    with sqlite3.connect(tmp_path / "mlruns.db") as writer:
        writer.execute("BEGIN EXCLUSIVE")
        assert [m.value for m in MlflowClient(tracking_uri).get_metric_history(run.run_id, "train_loss")] == [1.0]


def test_a_read_only_sqlite_store_is_read_in_the_mode_it_has(tmp_path):
    """A store someone can only read (an archived sweep, a colleague's file) cannot be switched to WAL: it is read as
    it is."""
    path = tmp_path / "archived.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT)")
        db.execute("INSERT INTO runs VALUES ('r1')")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        set_sqlite_pragmas(db, None)  # what every new connection of a sweep's processes runs
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT run_uuid FROM runs").fetchall() == [("r1",)]
    finally:
        db.close()


SITES = "index,path,stage,channels,downsampling,depth_fraction,module,inserted\n0,stages.0.act,1,32,True,0.000,LSLU,1\n"


def test_finish_logs_the_record_and_status_and_the_driver_draws_the_figures(tracking_uri, tmp_path):
    ctx = _context(tracking_uri)
    run = TrialRun.create(ctx, TrialConfig(), "trial_2", "1111", SITES)
    history = _history(3)
    for entry in history:
        run.log_epoch(entry["epoch"], {"train_loss": 1.0 / entry["epoch"], **act_metrics(entry["state"])})
    run.finish("completed", {"params_m": 0.1, "theta_conv/stages.0.act/1": 1.1})
    client = MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["status"] == "completed"
    # the trial draws nothing
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"config.yaml", "sites.csv"}
    draw_trial_figures(client, run.run_id)  # what the driver's figure queue does once Tune reports the trial ended
    assert {a.path for a in client.list_artifacts(run.run_id)} == {
        "config.yaml",
        "sites.csv",
        "sites.png",
        "theta_omega.csv",
        "theta_omega.png",
        "learning_curves.png",
    }
    csv_text = open(client.download_artifacts(run.run_id, "theta_omega.csv", str(tmp_path))).read().splitlines()
    assert csv_text[0] == "epoch,site,i,theta,omega"
    assert csv_text[1] == "1,stages.0.act,1,1.1,0.01" and len(csv_text) == 1 + 3 * 2
    assert got.data.metrics["theta/stages.0.act/2"] == 0.7
    # the driver rebuilds the same history from the run's metrics, asking only for the keys logged every epoch
    asked, get_metric_history = [], client.get_metric_history
    client.get_metric_history = lambda run_id, key: asked.append(key) or get_metric_history(run_id, key)
    assert act_history(run_history(client, client.get_run(run.run_id))) == history
    assert sorted(asked) == sorted(["train_loss", *act_metrics(history[0]["state"])])


def test_a_new_run_logs_its_files_without_asking_the_store_for_the_run(tracking_uri, tmp_path, monkeypatch):
    """The artifact location comes with ``create_run``'s answer: the trial's files (config.yaml and sites.csv at the
    start, the final files at the end) go to it without a ``get_run``; a reopened run asks once for it and its
    metrics."""
    ctx = _context(tracking_uri)
    asked, get_run = [], SqlAlchemyStore.get_run
    monkeypatch.setattr(SqlAlchemyStore, "get_run", lambda self, run_id: asked.append(run_id) or get_run(self, run_id))
    run = TrialRun.create(ctx, TrialConfig(), "trial_9", "1", SITES)
    run.log_epoch(1, {"train_loss": 0.5})
    files = tmp_path / "files"
    files.mkdir()
    (files / "model_summary.txt").write_text("the network")
    run.finish("completed", {"best_val_acc": 90.0}, files=str(files))
    assert asked == []
    client = MlflowClient(tracking_uri)
    assert {a.path for a in client.list_artifacts(run.run_id)} == {"config.yaml", "sites.csv", "model_summary.txt"}
    assert open(client.download_artifacts(run.run_id, "sites.csv", str(tmp_path))).read() == SITES
    (files / "model_summary.txt").write_text("the network, again")
    reopened = TrialRun.reopen(ctx, run.run_id)
    asked.clear()
    reopened.finish("completed", {"best_val_acc": 90.0, "min_val_loss": 0.4}, files=str(files))
    assert asked == [run.run_id]  # one look-up: the artifact location and the metric keys the run holds
    summary = client.download_artifacts(run.run_id, "model_summary.txt", str(tmp_path))
    assert open(summary).read() == "the network, again"
    assert [m.step for m in client.get_metric_history(run.run_id, "best_val_acc")] == [0]  # not logged twice
    assert [m.step for m in client.get_metric_history(run.run_id, "min_val_loss")] == [0]


def test_trials_of_one_network_and_mask_share_one_sites_drawing(tracking_uri, tmp_path):
    ctx = _context(tracking_uri)
    other = SITES.replace(",LSLU,1", ",ReLU,0")  # the same network with its site kept
    runs = [
        TrialRun.create(ctx, TrialConfig(), f"trial_{k}", "1", sites) for k, sites in enumerate((SITES, SITES, other))
    ]
    client = MlflowClient(tracking_uri)
    sites_png.cache_clear()
    pictures = []
    for k, run in enumerate(runs):
        run.finish("completed", {})
        draw_trial_figures(client, run.run_id)
        pictures.append(open(client.download_artifacts(run.run_id, "sites.png", str(tmp_path / str(k))), "rb").read())
    assert pictures[0] == pictures[1] != pictures[2] and pictures[0].startswith(b"\x89PNG")
    assert (sites_png.cache_info().hits, sites_png.cache_info().misses) == (1, 2)  # drawn once per network and mask


def test_act_metric_keys_round_trip():
    assert act_metrics({"layer1.0.act1": {"theta/1": 2.0, "omega/1": 0.5}}) == {
        "theta/layer1.0.act1/1": 2.0,
        "omega/layer1.0.act1/1": 0.5,
    }
    assert parse_act_metric_key("omega/layer1.0.act1/12") == ("layer1.0.act1", "omega/12")
    assert parse_act_metric_key("val_acc") is None and parse_act_metric_key("theta/x/y") is None
    assert parse_act_metric_key("theta_conv/x/1") is None  # logged once, at the end


def test_a_trial_restarted_without_checkpoint_finds_its_run(tracking_uri):
    ctx = _context(tracking_uri)
    cfg = TrialConfig()
    first = TrialRun.open(ctx, cfg, "trial_3", "1111", "")
    first.log_epoch(1, {"train_loss": 1.0})
    again = TrialRun.open(ctx, cfg, "trial_3", "1111", "")  # no run id: the trial had no checkpoint yet
    assert again.run_id == first.run_id and again.logged_through == 1
    other = TrialRun.open(ctx, cfg, "trial_4", "1111", "")
    assert other.run_id != first.run_id and other.logged_through == 0


def test_pwlu_boundaries_are_logged_and_rebuilt_beside_theta_omega(tracking_uri):
    ctx = _context(tracking_uri)
    run = TrialRun.create(ctx, TrialConfig(insert_act="pwlu"), "trial_5", "1010", "index,path\n")
    history = [
        {
            "epoch": e,
            "state": {
                "stem.act": {"pwlu_left": -3.0 + e / 10, "pwlu_right": 3.0 - e / 10},
                "stages.0.act": {"theta/1": 1.5, "omega/1": 0.25 * e},
                "stages.1.act": {"pwlu_left": -1.0, "pwlu_right": 2.0 + e},
            },
        }
        for e in (1, 2)
    ]
    for entry in history:
        run.log_epoch(entry["epoch"], act_metrics(entry["state"]))
    run.finish("completed", {})
    client = MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.data.tags["insert_act"] == "pwlu" and got.data.params["insert_act"] == "pwlu"
    assert got.info.run_name == "digits_cnn-pwlu-all-trial_5"  # n is LSLU's: not in a PWLU trial's name
    assert [m.value for m in client.get_metric_history(run.run_id, "pwlu_right/stages.1.act")] == [3.0, 4.0]
    assert act_history(run_history(client, client.get_run(run.run_id))) == history
    # only LSLU sites have θ/ω rows
    assert [r["site"] for r in theta_omega_rows(history)] == ["stages.0.act", "stages.0.act"]


def test_only_transient_failures_are_retried(tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(tracking_uri)
    with pytest.raises(MlflowException) as missing:
        client.get_run("0" * 32)
    assert missing.value.error_code == "RESOURCE_DOES_NOT_EXIST" and not is_transient(missing.value)
    with pytest.raises(MlflowException) as refused:
        MlflowClient(f"http://127.0.0.1:{free_port()}").search_experiments()  # nothing listens there
    assert is_transient(refused.value)

    attempts = []

    def refused_twice():
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionRefusedError("connection refused")
        return "sent"

    assert retry(refused_twice, budget_s=5, what="test", first_delay_s=0.05) == "sent"
    # doubling delays
    assert len(attempts) == 3 and attempts[1] - attempts[0] >= 0.05 and attempts[2] - attempts[1] >= 0.1
    start = time.monotonic()
    with pytest.raises(MlflowException):
        retry(lambda: client.get_run("0" * 32), budget_s=30, what="test")  # a client error: raised at once
    assert time.monotonic() - start < 5


def test_epochs_logged_during_an_outage_are_queued_then_sent_once(tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("LSLU_MLFLOW_EPOCH_RETRY_S", "0.3")
    ctx = _context(tracking_uri)
    run = TrialRun.create(ctx, TrialConfig(), "trial_5", "1111", "")
    run.log_epoch(1, {"train_loss": 1.0})
    store = run.client
    run.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # the tracking server is gone
    start = time.monotonic()
    run.log_epoch(2, {"train_loss": 0.5})
    run.log_epoch(3, {"train_loss": 0.25})
    assert time.monotonic() - start < 10  # training is held up by the retry budget only, and nothing raised
    assert [epoch for epoch, _ in run.unsent] == [2, 3] and run.logged_through == 3
    client = MlflowClient(tracking_uri)
    assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1]

    # the trial is restored from a checkpoint holding the queue, and the server answers again
    restored = TrialRun.open(ctx, TrialConfig(), "trial_5", "1111", "", run_id=run.run_id, unsent=run.unsent_state())
    assert restored.unsent == [] and restored.logged_through == 3
    # the first process sends its copy too (as if the answer to its request had been lost): no second row
    run.client = store
    assert run.flush(0) and run.unsent == []
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train_loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.25),
    ]
    # a restore whose checkpoint queued epochs the run already holds sends nothing again
    again = TrialRun.open(
        ctx, TrialConfig(), "trial_5", "1111", "", run_id=run.run_id, unsent=[(2, [("train_loss", 9.0, 1, 2)])]
    )
    assert again.unsent == [] and again.logged_through == 3
    assert len(client.get_metric_history(run.run_id, "train_loss")) == 3


def test_a_trial_that_died_after_finishing_does_not_log_its_final_metrics_twice(tracking_uri):
    ctx = _context(tracking_uri)
    history = _history(2)
    run = TrialRun.create(ctx, TrialConfig(), "trial_6", "1111", "")
    for entry in history:
        run.log_epoch(entry["epoch"], {"train_loss": 1.0, **act_metrics(entry["state"])})
    run.finish("completed", {"params_m": 0.1})
    # the node died before Tune got the last report: the trial is restored from epoch 1's checkpoint
    again = TrialRun.open(ctx, TrialConfig(), "trial_6", "1111", "", run_id=run.run_id)
    assert again.logged_through == 2
    again.log_epoch(2, {"train_loss": 1.0, **act_metrics(history[1]["state"])})  # already held: skipped
    again.finish("completed", {"params_m": 0.1})
    client = MlflowClient(tracking_uri)
    assert len(client.get_metric_history(run.run_id, "params_m")) == 1
    assert len(client.get_metric_history(run.run_id, "theta/stages.0.act/1")) == 2
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_final_metrics_skip_what_the_epochs_logged_and_go_with_the_status(tracking_uri):
    ctx = _context(tracking_uri)
    run = TrialRun.open(ctx, TrialConfig(), "trial_7", "1111", "", record={"params_m": 0.1})  # logged with the params
    run.log_epoch(1, {"train_loss": 1.0, "best_val_acc": 40.0})
    many = {f"site_{k}/value": float(k) for k in range(1500)}  # more than one log_batch holds
    run.finish("stopped_early", {"best_val_acc": 40.0, "params_m": 0.1, "min_val_loss": 0.9, **many}, reason="asha")
    client = MlflowClient(tracking_uri)

    def points(key):
        return [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)]

    assert points("best_val_acc") == [(1, 40.0)]  # logged per epoch: not again at step 0
    assert points("params_m") == [(0, 0.1)] and points("min_val_loss") == [(0, 0.9)]
    got = client.get_run(run.run_id)
    assert all(got.data.metrics[key] == value for key, value in many.items())
    assert got.data.tags["status"] == "stopped_early" and got.data.tags["status_reason"] == "asha"
    assert got.info.status == "FINISHED" and got.data.params["n"] == str(TrialConfig().n)
    # restored from a checkpoint: the record is not logged twice
    TrialRun.open(
        ctx, TrialConfig(), "trial_7", "1111", "", run_id=run.run_id, record={"params_m": 0.1, "lslu_sites": 4}
    )
    assert points("params_m") == [(0, 0.1)] and points("lslu_sites") == [(0, 4.0)]


def test_the_driver_closes_a_stopped_trials_run_with_its_record_and_summary(tracking_uri, tmp_path):
    """ASHA stops a trial between its epochs: the trial never finishes its run, so the driver's RunCloser ends it
    with the end-of-trial record of the trial's last result; model_summary.txt was logged when the run opened."""
    from types import SimpleNamespace

    from orchestrator.runs import RunCloser

    ctx = _context(tracking_uri)
    run = TrialRun.open(
        ctx, TrialConfig(), "trial_8", "1111", "index,path\n", record={"params_m": 0.1}, summary="the network"
    )
    run.log_epoch(1, {"train_loss": 1.0, "best_val_acc": 40.0})
    last_result = {
        "mlflow_run_id": run.run_id,
        "epoch": 1,
        "train_loss": 1.0,
        "best_val_acc": 40.0,
        "params_m": 0.1,
        "train_s_per_epoch": 2.5,
        "best_epoch": 1,
        "theta_conv/stages.0.act/1": 1.1,
        "theta_conv_std/stages.0.act/1": 0.0,
    }
    RunCloser(tracking_uri).on_trial_complete(0, [], SimpleNamespace(last_result=last_result, checkpoint=None))
    client = MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["status"] == "stopped_early"
    for key in ("train_s_per_epoch", "best_epoch", "theta_conv/stages.0.act/1", "theta_conv_std/stages.0.act/1"):
        assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, key)] == [(0, last_result[key])]
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "params_m")] == [(0, 0.1)]  # not twice
    # no epoch metric
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "train_loss")] == [(1, 1.0)]
    summary = client.download_artifacts(run.run_id, "model_summary.txt", str(tmp_path))
    assert open(summary).read() == "the network"
