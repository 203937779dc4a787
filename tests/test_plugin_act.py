"""A new activation added in one place: a class in a user's module, named by import path in the trial config."""

import textwrap

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from plugin_act import SlopeReLU
from trainables.activations import create_act, is_registered_act, learnable_act_state
from trainables.config import ConfigError, TrialConfig
from trainables.loop import Training

PLUGIN = "tests.plugin_act:SlopeReLU"
FAST = dict(
    epochs=2,
    warmup_epochs=0,
    insert_act=PLUGIN,
    policy="mask",
    mask="0101",
    train_samples=256,
    val_samples=128,
    batch_size=64,
)


def test_an_import_path_builds_the_class_with_its_arguments():
    act = create_act(PLUGIN, channels=8, init=0.5)
    assert type(act).__name__ == "SlopeReLU" and act.slope.item() == 0.5 and is_registered_act(PLUGIN)
    x = torch.tensor([-2.0, 3.0])
    assert torch.equal(act(x), torch.tensor([-1.0, 3.0]))
    with pytest.raises(ValueError, match="unknown argument.*bogus.*valid arguments: init"):
        create_act(PLUGIN, bogus=1)
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"insert_act": "tests.plugin_act:Nothing"})
    assert err.value.key == "insert_act" and "has no attribute 'Nothing'" in err.value.message


def test_the_loop_reports_its_state_and_calls_its_epoch_hook():
    training = Training(TrialConfig(**FAST))
    units = {p: m for p, m in training.model.named_modules() if type(m).__name__ == "SlopeReLU"}
    assert sorted(units) == ["stages.0.act", "stages.2.act"]
    training.run_epoch()
    training.run_epoch()
    assert all(m.epochs_started == 2 for m in units.values())
    state = training.act_history[-1]["state"]
    assert state == {p: {"slope": m.slope.item()} for p, m in units.items()} == learnable_act_state(training.model)
    assert all(v["slope"] != 0.25 for v in state.values())  # learned


@pytest.mark.slow
def test_a_sweep_logs_its_parameter_every_epoch(ray_local, tmp_path, tracking_uri):
    from orchestrator.driver import run_sweep
    from search_spaces.schema import parse_sweep

    text = textwrap.dedent(f"""
        name: plugin_act
        trial: {FAST}
        search: {{algorithm: random, num_samples: 1, max_concurrent: 1, scheduler: none}}
    """)
    sweep = parse_sweep(yaml.safe_load(text), text, str(tmp_path / "plugin.yaml"))
    outcome = run_sweep(sweep, tracking_uri=tracking_uri, storage=str(tmp_path / "ray"))
    assert [r["status"] for r in outcome.rows] == ["completed"]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("plugin_act")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert child.data.params["insert_act"] == PLUGIN
    for path in ("stages.0.act", "stages.2.act"):
        history = client.get_metric_history(child.info.run_id, f"slope/{path}")
        assert [m.step for m in history] == [1, 2] and history[-1].value != 0.25
        assert not any(k.startswith("slope_conv") for k in child.data.metrics)  # a single value, not a series
    sites = open(client.download_artifacts(child.info.run_id, "sites.csv", str(tmp_path))).read().splitlines()
    assert [line.split(",")[-2:] for line in sites[1:]] == [
        ["ReLU", "0"],
        ["SlopeReLU", "1"],
        ["ReLU", "0"],
        ["SlopeReLU", "1"],
    ]
    assert isinstance(SlopeReLU(), torch.nn.Module)
