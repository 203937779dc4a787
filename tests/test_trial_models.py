"""A trial's MLflow model (DESIGN.md §5 "Models"): ``log_deploy_model`` on a real SQLite store, and what a network
``torch.export`` cannot trace leaves behind (nothing: no half-made model on the run)."""

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from orchestrator.export import logged_model_id
from trainables.config import TrialConfig
from trainables.deploy import log_deploy_model, using_tracking_uri
from trainables.loop import build_network
from trainables.models.stats import fuse_model


def _trained(model: str):
    cfg = TrialConfig(model=model, image_size=16, insert_act="lslu", n=2, policy="downsampling")
    net, _ = build_network(cfg, 10, 3)
    with torch.no_grad():  # trained: BatchNorm statistics and θ/ω away from their initial values
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        net.train()(torch.randn(8, 3, 16, 16))
    return net.eval(), cfg


def test_a_logged_model_is_the_runs_newest_ready_model_and_matches_the_deploy_form(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("t")
    run_id = client.create_run(exp).info.run_id
    net, cfg = _trained("digits_cnn")
    model_id = log_deploy_model(client, exp, run_id, net, (3, 16, 16), cfg.to_dict())
    assert logged_model_id(client, run_id) == model_id
    x = torch.randn(3, 3, 16, 16)
    with using_tracking_uri(tracking_uri):
        loaded = mlflow.pytorch.load_model(f"models:/{model_id}")
    with torch.no_grad():
        assert (loaded(x) - fuse_model(net)(x)).abs().max() <= 1e-5


def test_a_network_export_cannot_trace_leaves_no_model_on_its_run(tracking_uri):
    client = MlflowClient(tracking_uri)
    exp = client.create_experiment("t")
    run_id = client.create_run(exp).info.run_id
    net, cfg = _trained("tests.user_models:build_data_dependent")  # its forward branches on values
    with pytest.raises(Exception, match="data-dependent"):
        log_deploy_model(client, exp, run_id, net, (3, 16, 16), cfg.to_dict())
    # MLflow linked the model to the run's outputs before the export failed: it is deleted, and not the run's model
    assert client.search_logged_models([exp]) == [] and logged_model_id(client, run_id) is None
