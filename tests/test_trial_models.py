"""A trial's MLflow model, logged by the driver from the trial's run (DESIGN.md §5 "Models"): the trial only asks for
it (tag ``deploy_model: pending``), the figure queue logs it once the trial ended, the end of the sweep logs what is
still pending, and a network ``torch.export`` cannot trace leaves the run its weights and a tag saying why."""

import tempfile
from pathlib import Path

import mlflow.pytorch
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient

from orchestrator.figures import complete_figures, figure_queue
from trainables.config import TrialConfig
from trainables.deploy import DEPLOY_ERROR_TAG, DEPLOY_TAG, LOGGED, PENDING, using_tracking_uri
from trainables.loop import build_network
from trainables.models.stats import fuse_model
from trainables.tracking import SweepContext, TrialRun


def _context(uri):
    client = MlflowClient(uri)
    exp = client.create_experiment("t")
    parent = client.create_run(exp, run_name="parent")
    return SweepContext(uri, exp, parent.info.run_id, "t", {})


def _ended_trial(ctx, trial_id: str, model: str, asks_model: bool = True):
    """A trial run as a trial leaves it: config, sites, trained weights, input tags, status; the network it trained."""
    cfg = TrialConfig(model=model, image_size=16, insert_act="lslu", n=2, policy="downsampling")
    net, mask = build_network(cfg, 10, 3)
    with torch.no_grad():  # trained: BatchNorm statistics and θ/ω away from their initial values
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        net.train()(torch.randn(8, 3, 16, 16))
    run = TrialRun.create(ctx, cfg, trial_id, mask, None, extra_tags={"input_shape": "3x16x16", "num_classes": "10"})
    with tempfile.TemporaryDirectory() as d:
        torch.save(net.state_dict(), Path(d) / "model_final.pt")
        run.finish("completed", {}, files=d, tags={DEPLOY_TAG: PENDING} if asks_model else None)
    return run.run_id, net.eval()


def _models(client, run_id):
    """The run's complete (READY) MLflow models."""
    experiment = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run_id}'")
    return [m.model_id for m in models if m.status == LoggedModelStatus.READY]


def test_the_driver_logs_the_model_a_trial_asks_for_once(tracking_uri):
    ctx = _context(tracking_uri)
    client = MlflowClient(tracking_uri)
    queued, net = _ended_trial(ctx, "trial_1", "digits_cnn")
    left, left_net = _ended_trial(ctx, "trial_2", "digits_cnn")  # a driver restart lost its turn in the queue
    supernet, _ = _ended_trial(ctx, "trial_3", "digits_cnn", asks_model=False)
    assert _models(client, queued) == []  # the trial logged weights, not a model
    queue = figure_queue(tracking_uri)
    queue.submit(queued)
    queue.submit(supernet)
    queue.drain()
    assert len(_models(client, queued)) == 1 and _models(client, left) == [] and _models(client, supernet) == []
    assert client.get_run(queued).data.tags[DEPLOY_TAG] == LOGGED
    assert complete_figures(ctx) == 1  # the end of the sweep: the pending one (figures were not asked of these runs)
    assert client.get_run(left).data.tags[DEPLOY_TAG] == LOGGED
    assert complete_figures(ctx) == 0 and len(_models(client, queued)) == len(_models(client, left)) == 1
    assert DEPLOY_TAG not in client.get_run(supernet).data.tags
    x = torch.randn(3, 3, 16, 16)
    for run_id, trained in ((queued, net), (left, left_net)):
        with using_tracking_uri(tracking_uri):
            loaded = mlflow.pytorch.load_model(f"models:/{_models(client, run_id)[0]}")
        with torch.no_grad():
            assert (loaded(x) - fuse_model(trained)(x)).abs().max() <= 1e-5


def test_a_network_export_cannot_trace_keeps_its_weights_and_says_why(tracking_uri):
    ctx = _context(tracking_uri)
    client = MlflowClient(tracking_uri)
    run_id, _ = _ended_trial(ctx, "trial_1", "tests.user_models:build_data_dependent")
    queue = figure_queue(tracking_uri)
    queue.submit(run_id)
    queue.drain()  # a warning, not an error: the sweep goes on
    run = client.get_run(run_id)
    assert _models(client, run_id) == [] and run.data.tags[DEPLOY_TAG] == "failed"
    assert run.data.tags[DEPLOY_ERROR_TAG].startswith("GuardOnDataDependentSymNode: Could not guard on data-dependent")
    assert client.search_logged_models([ctx.experiment_id]) == []  # the half-made model is gone
    assert "model_final.pt" in {a.path for a in client.list_artifacts(run_id)}
    assert complete_figures(ctx) == 0  # not retried at the end of the sweep
