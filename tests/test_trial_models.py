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


EMA_TRIAL = dict(epochs=2, n=1, ema_decay=0.5, train_samples=256, val_samples=128, batch_size=64, seed=0, device="cpu")


def test_a_trial_deploys_its_emas_weights_where_they_scored_higher_in_the_last_evaluation():
    from trainables.loop import Training

    training = Training(TrialConfig(**EMA_TRIAL))
    metrics = training.run_epoch()
    assert training.deploys_ema == (metrics["ema_val_acc"] > metrics["val_acc"])
    # the EMA holds the trained weights, the model noise: the EMA scores higher and is what the trial deploys
    training.ema.module.load_state_dict(training.model.state_dict())
    with torch.no_grad():
        for p in training.model.parameters():
            p.copy_(torch.randn_like(p))
    metrics = training._evaluate_epoch()
    assert metrics["ema_val_acc"] > metrics["val_acc"] and training.deploys_ema
    assert training.deployed_network is training.ema.module
    training.ema.module.load_state_dict(training.model.state_dict())  # equal: the model's own weights
    training._evaluate_epoch()
    assert not training.deploys_ema and training.deployed_network is training.model


@pytest.mark.parametrize("tag", [None, "model_final.pt", "model_ema_final.pt"])
def test_export_rebuilds_the_weights_the_runs_deploy_weights_tag_names(tracking_uri, tmp_path, tag):
    import yaml

    from orchestrator.export import export_run, trained_model

    cfg = TrialConfig(model="digits_cnn", image_size=16, n=1, ema_decay=0.5)
    nets = {name: build_network(cfg, 10, 3)[0].eval() for name in ("model_final.pt", "model_ema_final.pt")}
    client = MlflowClient(tracking_uri)
    tags = {
        "input_shape": "3x16x16",
        "num_classes": "10",
        "status": "completed",
        **({"deploy_weights": tag} if tag else {}),
    }
    run = client.create_run(client.create_experiment("t"), tags=tags, run_name="ema-trial")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    client.log_artifact(run.info.run_id, str(tmp_path / "config.yaml"))
    for name, net in nets.items():
        torch.save(net.state_dict(), tmp_path / name)
        client.log_artifact(run.info.run_id, str(tmp_path / name))
    run = client.get_run(run.info.run_id)
    rebuilt, shape, _ = trained_model(client, run)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert not torch.equal(nets["model_final.pt"](x), nets["model_ema_final.pt"](x))  # two different networks
        assert torch.equal(rebuilt(x), nets[tag or "model_final.pt"](x))
    path, diff = export_run(client, run, output=str(tmp_path / "out.pt2"))
    with torch.no_grad():
        assert (torch.export.load(path).module()(x) - nets[tag or "model_final.pt"](x)).abs().max() <= 1e-4
