"""Whole sweeps on a real local Ray, logged to a real SQLite MLflow store and read back with MlflowClient."""

import csv
import json
import os
import re
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.tune import Callback

from orchestrator.cli import main
from orchestrator.driver import resume_sweep, run_sweep
from orchestrator.search import MAX_SITES_CONSTRAINT, TUNE_TRIAL_ID
from search_spaces.schema import SpecError, load_sweep, parse_sweep

pytestmark = pytest.mark.slow
# every trial's, completed or stopped by the scheduler (whose run the driver closes)
TRIAL_ARTIFACTS = {
    "config.yaml",
    "sites.csv",
    "sites.png",
    "theta_omega.csv",
    "theta_omega.png",
    "learning_curves.png",
    "model_final.pt",
    "model_summary.txt",
}
INSERT_MODULES = {"lslu": "LSLU", "pwlu": "PWLU", "la_silu": "LayerAct"}  # quickstart's insert_act choices


def _runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def _assert_study_holds_the_trials(storage, study_name, best_val_acc, epochs_run):
    """The sweep's Optuna study in its storage: one trained trial per Ray trial (``best_val_acc``: Tune trial id →
    its value), told with that value, its learning curve one value per epoch it ran (``epochs_run``) ending at it;
    every other trial a sample rejected over max_sites, none left running."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    trained = [t for t in study.trials if TUNE_TRIAL_ID in t.user_attrs]
    assert sorted(t.user_attrs[TUNE_TRIAL_ID] for t in trained) == sorted(best_val_acc)  # each Ray trial once
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trained)
    assert {t.user_attrs[TUNE_TRIAL_ID]: t.value for t in trained} == pytest.approx(best_val_acc)
    for t in trained:  # the last epoch too, whether the trial ended by itself or its scheduler stopped it
        curve = t.intermediate_values
        assert sorted(curve) == list(range(1, epochs_run[t.user_attrs[TUNE_TRIAL_ID]] + 1))
        assert curve[max(curve)] == pytest.approx(t.value)
    rejected = [t for t in study.trials if TUNE_TRIAL_ID not in t.user_attrs]
    assert all(t.state == TrialState.COMPLETE and t.constraints[MAX_SITES_CONSTRAINT] > 0 for t in rejected)


def _assert_each_epoch_once(client, run, epochs):
    for key in ("train_loss", "val_loss", "val_acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, key, steps)


def test_quickstart_smoke_sweep_end_to_end(ray_local, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "quickstart", "--smoke-test", "--set", "trial.bn_recalibrate_batches=2"]) == 0
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
    # the --set override reached every trial, and the parent records it and the file as overridden
    assert parent.data.tags["overrides"] == "trial.bn_recalibrate_batches=2"
    recorded = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path))).read())
    assert recorded["trial"]["bn_recalibrate_batches"] == 2 and recorded["name"] == "quickstart"
    assert {c.data.params["bn_recalibrate_batches"] for c in children} == {"2"}
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.csv",
        "best_config.yaml",
        "sweep.yaml",
        "parallel_coordinates.png",
    }
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"  # completed, or stopped by ASHA (tags.status tells which)
        assert child.data.tags["status"] in ("completed", "stopped_early")
        assert {a.path for a in client.list_artifacts(child.info.run_id)} == TRIAL_ARTIFACTS
        weights = torch.load(
            client.download_artifacts(child.info.run_id, "model_final.pt", str(tmp_path)), weights_only=True
        )
        assert weights["fc.weight"].shape == (10, 64)  # digits_cnn's classifier
        for key in ("params_m", "flops_g", "latency_ms", "lslu_sites"):  # known before training: every trial has them
            assert key in child.data.metrics and len(client.get_metric_history(child.info.run_id, key)) == 1
        epochs = len(client.get_metric_history(child.info.run_id, "val_acc"))
        _assert_each_epoch_once(client, child, epochs)
        # the end-of-trial record, once, whether the trial completed or ASHA stopped it
        times = [m.value for m in client.get_metric_history(child.info.run_id, "epoch_time_s")]
        assert child.data.metrics["train_s_per_epoch"] == pytest.approx(sum(times) / len(times))
        bests = sorted(client.get_metric_history(child.info.run_id, "best_val_acc"), key=lambda m: m.step)
        assert child.data.metrics["best_epoch"] == next(m.step for m in bests if m.value == bests[-1].value)
        for key in ("train_s_per_epoch", "best_epoch"):
            assert len(client.get_metric_history(child.info.run_id, key)) == 1
        mask = child.data.params["mask"]
        assert child.data.tags["mask"] == mask and len(mask) == 4
        n = int(child.data.params["n"])
        insert_act = child.data.params["insert_act"]  # the searched activation, shown as a param and a tag
        assert child.data.tags["insert_act"] == insert_act and insert_act in INSERT_MODULES
        theta_keys = {k for k in child.data.metrics if k.startswith("theta/")}
        pwlu_keys = {k for k in child.data.metrics if k.startswith("pwlu_")}
        # theta/<site>/<i> for every LSLU site, pwlu_left|right/<site> for every PWLU site, nothing for LayerAct
        assert len(theta_keys) == (n * mask.count("1") if insert_act == "lslu" else 0)
        assert len(pwlu_keys) == (2 * mask.count("1") if insert_act == "pwlu" else 0)
        for key in theta_keys | pwlu_keys:
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == list(range(1, epochs + 1))
        for key in theta_keys:  # θ_i's convergence value: the mean over its (at most 10) epochs, papers/000 §4.2
            values = [m.value for m in client.get_metric_history(child.info.run_id, key)]
            assert child.data.metrics["theta_conv" + key[5:]] == pytest.approx(sum(values) / len(values))
        sites_csv = client.download_artifacts(child.info.run_id, "sites.csv", str(tmp_path / child.info.run_id))
        inserted = {row["module"] for row in csv.DictReader(open(sites_csv)) if row["inserted"] == "1"}
        assert inserted == ({INSERT_MODULES[insert_act]} if "1" in mask else set())

    results = client.download_artifacts(parent.info.run_id, "results.csv", str(tmp_path))
    lines = open(results).read().splitlines()
    assert len(lines) == 1 + 4 and "config.mask" in lines[0] and "best_val_acc" in lines[0]
    # what MLflow shows for each trial is what Tune ran it with
    rows = pd.read_csv(results)
    by_run = {c.info.run_id: c.data.params["insert_act"] for c in children}
    assert dict(zip(rows["mlflow_run_id"], rows["config.insert_act"])) == by_run
    assert len(set(by_run.values())) >= 2  # the searcher did choose (seeded: not all four trials alike)
    # the Optuna study: in optuna.db beside mlruns.db, named after the parent run, which says where it is
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert parent.data.tags["optuna_storage"] == storage
    assert parent.data.tags["optuna_study"] == parent.info.run_name
    assert "watch it with: optuna-dashboard sqlite:///optuna.db" in out
    _assert_study_holds_the_trials(
        storage,
        parent.info.run_name,
        dict(zip(rows["trial_id"], rows["best_val_acc"])),
        dict(zip(rows["trial_id"], rows["epochs_run"])),
    )
    best_file = client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path))
    best = load_sweep(best_file)  # directly runnable
    assert best.spec.search.num_samples == 1 and not best.spec.space and best.base.policy == "mask"
    assert parent.data.tags["best_trial_run_id"] in {c.info.run_id for c in children}
    # the ui hint's θ/ω link: the best of the trials that hold θ/ω (LSLU sites), whichever trial is best
    with_theta = [c for c in children if any(k.startswith("theta/") for k in c.data.metrics)]
    if with_theta:  # (smoke accuracies tie often: the tagged trial is one of the best)
        tagged = next(c for c in with_theta if c.info.run_id == parent.data.tags["theta_omega_run_id"])
        assert tagged.data.metrics["best_val_acc"] == max(c.data.metrics["best_val_acc"] for c in with_theta)
    else:
        assert "theta_omega_run_id" not in parent.data.tags
    # the sweep's saved UI view lists exactly its trials, best first
    experiment_tags = client.get_experiment(parent.info.experiment_id).tags
    view = json.loads(experiment_tags[f"mlflow.sharedViewState.{parent.info.run_name}"])
    listed = client.search_runs(
        [parent.info.experiment_id], view["searchFilter"], order_by=[f"{view['orderByKey']} DESC"]
    )
    assert {r.info.run_id for r in listed} == {c.info.run_id for c in children}
    accs = [r.data.metrics["best_val_acc"] for r in listed]
    assert accs == sorted(accs, reverse=True)
    _assert_models_in_mlflow(client, uri, parent, children, tmp_path, capsys)


def _trained(client, run, folder):
    """A trial's network rebuilt by hand from its run's config.yaml and model_final.pt (eval mode), and its input
    shape."""
    from trainables.config import TrialConfig
    from trainables.loop import build_network

    config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(folder))))
    weights = torch.load(client.download_artifacts(run.info.run_id, "model_final.pt", str(folder)), weights_only=True)
    shape = tuple(int(s) for s in run.data.tags["input_shape"].split("x"))
    model, _ = build_network(TrialConfig.from_flat(config), int(run.data.tags["num_classes"]), shape[0])
    model.load_state_dict(weights)
    return model.eval(), shape


def _assert_models_in_mlflow(client, uri, parent, children, tmp_path, capsys):
    """DESIGN.md §5 "Models" and "System metrics": each trial the trainable ended logged its deploy form as an MLflow
    model (the fused network, equal to the one rebuilt from config and weights), the sweep registered its best
    trial's, every trial run has MLflow's system metrics, and `lslu-sweep export` writes a .pt2 true to the model."""
    import mlflow.pytorch

    from trainables.deploy import using_tracking_uri
    from trainables.models.stats import fuse_model

    completed = [c for c in children if c.data.tags["status"] == "completed"]
    assert completed  # the smoke sweep's best trials run to the end
    for child in children:
        assert "system/cpu_utilization_percentage" in child.data.metrics, child.info.run_name
        assert child.data.tags["input_shape"] == "3x16x16" and child.data.tags["num_classes"] == "10"
    for child in completed:
        outputs = client.get_run(child.info.run_id).outputs.model_outputs
        assert len(outputs) == 1
        logged = client.get_logged_model(outputs[0].model_id)
        assert logged.experiment_id == parent.info.experiment_id and logged.source_run_id == child.info.run_id
        model, shape = _trained(client, child, tmp_path / child.info.run_id)
        x = torch.randn(3, *shape)
        with using_tracking_uri(uri):
            loaded = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
            info = mlflow.models.get_model_info(f"models:/{logged.model_id}")
        with torch.no_grad():
            assert (loaded(x) - fuse_model(model)(x)).abs().max() <= 1e-5
        assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, *shape)
        assert info.metadata["config"] == yaml.safe_load(
            open(client.download_artifacts(child.info.run_id, "config.yaml", str(tmp_path / "c")))
        )
    best_run_id = parent.data.tags["best_trial_run_id"]
    versions = client.search_model_versions("name = 'quickstart'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", best_run_id)]
    assert client.get_run(parent.info.run_id).data.tags["registered_model_version"] == "quickstart/1"

    capsys.readouterr()
    assert main(["export", parent.info.run_name, "--output", str(tmp_path / "best.pt2")]) == 0
    out = capsys.readouterr().out
    assert "input (N, 3, 16, 16) float32; max abs difference from the trained model's output" in out
    model, shape = _trained(client, client.get_run(best_run_id), tmp_path / "best")
    x = torch.randn(5, *shape)  # another batch size than the traced one: the batch dimension is free
    with torch.no_grad():
        assert (torch.export.load(str(tmp_path / "best.pt2")).module()(x) - model(x)).abs().max() <= 1e-4
    _assert_onnx_export(parent.info.run_name, model, x, tmp_path, capsys)


def _assert_onnx_export(sweep_run_name, model, x, tmp_path, capsys):
    """`export --format onnx` (the onnx extra, installed with the test extra) writes a file onnxruntime runs to the
    trained model's output; without the extra it says what to install and writes nothing."""
    import onnxruntime

    path = tmp_path / "best.onnx"
    assert main(["export", sweep_run_name, "--format", "onnx", "--output", str(path)]) == 0
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets without the extra
        assert main(["export", sweep_run_name, "--format", "onnx", "--output", str(tmp_path / "no.onnx")]) != 0
    assert "onnxruntime is missing): pip install 'lslu-sweep[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "no.onnx").exists()


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


@pytest.mark.parametrize(
    "resources, asks",
    [
        ("{cpu: 1, gpu: 1}", "1 CPU and 1 GPU"),
        ("{cpu: 1, gpu: 0.5}", "1 CPU and 0.5 GPU"),
        ("{cpu: 3}", "3 CPU and 0 GPU"),
    ],
)
def test_a_trial_no_node_can_hold_is_refused_before_mlflow(ray_local, tmp_path, tracking_uri, resources, asks):
    """The embedded Ray (2 CPUs, no GPU, as ray_local starts it) never grows: Tune would keep such trials pending."""
    text = textwrap.dedent(SPEC.format(name="toobig", samples=2)) + f"resources: {resources}\n"
    sweep = parse_sweep(yaml.safe_load(text), text, str(tmp_path / "toobig.yaml"))
    with pytest.raises(SpecError) as refused:
        run_sweep(sweep, tracking_uri=tracking_uri, storage=str(tmp_path / "ray"))
    assert str(refused.value).startswith(
        f"{tmp_path / 'toobig.yaml'}: resources: each trial asks {asks}, "
        "but no node of an embedded local Ray has that (2 CPU, 0 GPU)"
    )
    assert MlflowClient(tracking_uri).get_experiment_by_name("toobig") is None  # refused before MLflow
    assert not (tmp_path / "ray").exists()


class KillTrialProcess(Callback):
    """SIGKILLs the worker process of the first trial whose epoch-2 checkpoint Tune has registered: a real crash,
    once."""

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
    outcome = run_sweep(
        _sweep(tmp_path, "crash", 2), tracking_uri=tracking_uri, storage=str(tmp_path / "ray"), callbacks=(killer,)
    )
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
    # each trial keeps only its latest checkpoint (each is the full training state), the killed one too
    for r in outcome.results:
        assert sorted(Path(r.path).glob("checkpoint_*")) == [Path(r.checkpoint.path)], r.path


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
    first = run_sweep(
        _sweep(tmp_path, "stopgo", 3),
        tracking_uri=tracking_uri,
        storage=storage,
        callbacks=(InterruptDriver(tmp_path / "sent"),),
    )
    assert first.interrupted and first.best is None
    assert f"Continue it with: lslu-sweep resume {first.name} --storage {storage}" in first.text  # not the default
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
    # the resumed searcher told the same study in the same storage: each trial once
    _assert_study_holds_the_trials(
        f"sqlite:///{tmp_path / 'optuna.db'}",
        first.name,
        {r["trial_id"]: r["best_val_acc"] for r in second.rows},
        {r["trial_id"]: r["epochs_run"] for r in second.rows},
    )
    versions = len(client.search_model_versions("name = 'stopgo'"))
    with pytest.raises(FileNotFoundError, match=f"{first.name} finished, nothing to resume"):
        resume_sweep("stopgo", storage=storage, tracking_uri=tracking_uri)  # a finished sweep is left as it is
    assert len(client.search_model_versions("name = 'stopgo'")) == versions == 1


def test_a_ctrl_c_after_the_last_trial_leaves_the_sweeps_end_to_resume(ray_local, tmp_path, tracking_uri, monkeypatch):
    import orchestrator.driver as driver

    calls = []

    def figures_then_ctrl_c(ctx):  # the first sweep's end is interrupted in its first step, as a Ctrl+C does
        calls.append(ctx)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return complete_figures(ctx)

    complete_figures = driver.complete_figures
    monkeypatch.setattr(driver, "complete_figures", figures_then_ctrl_c)
    storage = str(tmp_path / "ray")
    first = run_sweep(_sweep(tmp_path, "endgo", 2), tracking_uri=tracking_uri, storage=storage)
    assert first.interrupted and "was interrupted with every trial ended but not the sweep's end" in first.text
    assert "Continue it with: lslu-sweep resume endgo-" in first.text
    client, parents, children = _runs(tracking_uri, "endgo")
    assert parents[0].info.status == "KILLED" and parents[0].data.tags["sweep_status"] == "interrupted"
    second = resume_sweep("endgo", storage=storage, tracking_uri=tracking_uri)
    assert not second.interrupted and second.name == first.name and second.best is not None
    client, parents, children = _runs(tracking_uri, "endgo")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2
    assert [str(v.version) for v in client.search_model_versions("name = 'endgo'")] == ["1"]


def test_a_resnet18_trial_with_cifar_stem_and_downsampling_policy(ray_local, tmp_path, tracking_uri):
    text = textwrap.dedent("""
        # lslu-sweep run resnet18_downsampling.yaml
        name: r18ds
        trial: {model: resnet18, cifar_stem: true, policy: downsampling, n: 1, epochs: 1, warmup_epochs: 0,
                train_samples: 256, val_samples: 128, batch_size: 64}
        search: {algorithm: random, num_samples: 1, max_concurrent: 1, scheduler: none}
    """)
    sweep = parse_sweep(yaml.safe_load(text), text, str(tmp_path / "r18.yaml"))
    outcome = run_sweep(sweep, tracking_uri=tracking_uri, storage=str(tmp_path / "ray"))
    assert [r["status"] for r in outcome.rows] == ["completed"]
    client, _, children = _runs(tracking_uri, "r18ds")
    (child,) = children
    assert child.data.tags["mask"] == "10000010001000100" and child.data.params["cifar_stem"] == "True"
    assert child.data.metrics["lslu_sites"] == 4 and child.data.metrics["params_m"] == pytest.approx(11.18, abs=0.01)
    theta_sites = {k.split("/")[1] for k in child.data.metrics if k.startswith("theta/")}
    assert theta_sites == {"act1", "layer2.0.act2", "layer3.0.act2", "layer4.0.act2"}
    sites = open(client.download_artifacts(child.info.run_id, "sites.csv", str(tmp_path))).read().splitlines()
    header = "index,path,stage,channels,downsampling,depth_fraction,layout,eligible,reason,module,inserted"
    assert sites[0] == header and len(sites) == 18
    assert sites[7].startswith("6,layer2.0.act2,2,128,True,") and sites[7].endswith(",LSLU,1")


def test_a_diverging_trial_is_recorded_and_the_sweep_goes_on(ray_local, tmp_path, tracking_uri):
    text = textwrap.dedent("""
        name: diverge
        trial: {optimizer: sgd, weight_decay: 0.0, epochs: 3, warmup_epochs: 0, n: 1, train_samples: 256,
                val_samples: 128}
        space: {lr: [0.01, 1.0e+8]}
        search: {algorithm: random, num_samples: 4, max_concurrent: 2, scheduler: none, seed: 7}
    """)
    outcome = run_sweep(
        parse_sweep(yaml.safe_load(text), text, "diverge.yaml"),
        tracking_uri=tracking_uri,
        storage=str(tmp_path / "ray"),
    )
    by_lr = {}
    for row in outcome.rows:
        by_lr.setdefault(row["config.lr"], set()).add(row["status"])
    assert by_lr == {0.01: {"completed"}, 1e8: {"diverged"}}  # seed 7 draws each value twice
    client, parents, children = _runs(tracking_uri, "diverge")
    assert parents[0].info.status == "FINISHED" and len(children) == 4
    for child in children:
        diverged = child.data.params["lr"] == "100000000.0"
        assert child.data.tags["status"] == ("diverged" if diverged else "completed")
        assert child.info.status == ("FAILED" if diverged else "FINISHED")
        if diverged:
            reason = child.data.tags["status_reason"]
            assert "loss became nan" in reason or "loss became inf" in reason
        else:
            assert {"theta_conv/stem.act/1", "theta_conv_std/stem.act/1", "best_epoch", "train_s_per_epoch"} <= set(
                child.data.metrics
            )
            assert "model_summary.txt" in {a.path for a in client.list_artifacts(child.info.run_id)}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA: the cuda trial must fail there")
def test_a_failing_trial_gets_a_failed_run_with_its_error_and_the_console_says_why(ray_local, tmp_path, tracking_uri):
    text = textwrap.dedent("""
        name: failing
        trial: {epochs: 1, n: 1, train_samples: 128, val_samples: 64}
        space: {device: [cpu, cuda]}
        search: {algorithm: grid, max_concurrent: 2, scheduler: none}
    """)
    outcome = run_sweep(
        parse_sweep(yaml.safe_load(text), text, "failing.yaml"),
        tracking_uri=tracking_uri,
        storage=str(tmp_path / "ray"),
    )
    statuses = {r["config.device"]: r for r in outcome.rows}
    assert {d: r["status"] for d, r in statuses.items()} == {"cpu": "completed", "cuda": "failed"}
    failed = statuses["cuda"]
    reason = "RuntimeError: device: cuda was asked for, but this trial sees no CUDA device"
    assert failed["reason"] == reason and failed["trial_id"]
    # the console summary names the trial and the reason in one line
    assert f"  trial {failed['trial_id']} failed: {reason}" in outcome.text.splitlines()
    client, parents, children = _runs(tracking_uri, "failing")
    assert len(children) == 2
    child = next(c for c in children if c.data.params["device"] == "cuda")
    assert child.info.status == "FAILED" and child.data.tags["status"] == "failed"
    assert child.data.tags["trial_id"] == failed["trial_id"] and child.data.tags["error"] == reason
    error_txt = open(client.download_artifacts(child.info.run_id, "error.txt", str(tmp_path))).read()
    assert error_txt.startswith("Traceback") and error_txt.rstrip().endswith(reason)
    assert "sites.csv" not in {a.path for a in client.list_artifacts(child.info.run_id)}  # no network was built


def test_the_readmes_python_api_example_runs_as_written(ray_local, tmp_path, monkeypatch, capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert re.search(r"trial \w+ epoch 1: val_acc [\d.]+", out)  # the callback ran on the driver
    assert re.search(r"quickstart-smoke-\d{8}-\d{6} best: \w+ [\d.]+", out)
    client, parents, children = _runs(f"sqlite:///{tmp_path / 'mlruns.db'}", "quickstart")
    assert (
        len(parents) == 1
        and len(children) == 2
        and parents[0].data.tags["overrides"] == "trial.epochs=3 search.num_samples=2"
    )
