"""Every preset of papers/000's experiments runs end to end with --smoke-test on a real local Ray, and its
outputs are read back from the SQLite MLflow store with MlflowClient (issue 6's "done when")."""

import io

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.report import read_results
from search_spaces.schema import PRESET_DIR, load_sweep

pytestmark = pytest.mark.slow
# quickstart: tests/test_sweep.py; insertion_resnet18: its own test below (the same checks and more);
# your_own_network: tests/test_user_data_sweep.py, from its own process (this process's Ray has no runtime_env)
# the one-shot presets: tests/test_oneshot_sweep.py
OWN_TESTS = (
    "quickstart",
    "insertion_resnet18",
    "your_own_network",
    "insertion_resnet18_oneshot",
    "insertion_resnet50_oneshot",
)
PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem not in OWN_TESTS)
SMOKE_TRIALS = 4


def _sweep_runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _text(client, run_id, path, tmp_path):
    return open(client.download_artifacts(run_id, path, str(tmp_path / run_id))).read()


@pytest.fixture
def smoke_run(ray_local, tmp_path, monkeypatch, capsys):
    """Run a preset with --smoke-test in a fresh directory (its own mlruns.db and ray_results); return what it
    logged."""
    monkeypatch.chdir(tmp_path)

    def run(preset):
        assert main(["run", preset, "--smoke-test"]) == 0, capsys.readouterr().err
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
        (parent,), children = _sweep_runs(client, preset)
        return client, parent, children, capsys.readouterr().out

    return run


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_with_smoke_test(preset, smoke_run, tmp_path):
    _check_smoke_outputs(preset, *smoke_run(preset), tmp_path)


def _check_smoke_outputs(preset, client, parent, children, out, tmp_path):
    sweep = load_sweep(preset)
    run_id = parent.info.run_id
    assert parent.info.status == "FINISHED" and parent.data.tags["smoke_test"] == "true"
    # same searcher and space, shrunk: digits, <= 4 trials, <= 2 epochs, small images
    assert parent.data.params["algorithm"] == sweep.spec.search.algorithm
    assert parent.data.params["searched"] == ",".join(sweep.spec.space)
    # each trial takes one CPU and no GPU here, whatever the preset asks: else Tune would wait forever for resources
    assert (parent.data.params["cpu_per_trial"], parent.data.params["gpu_per_trial"]) == ("1.0", "0.0")
    assert f"the sweep file asks {sweep.spec.resources.cpu:g} CPU, {sweep.spec.resources.gpu:g} GPU" in out
    assert len(children) == SMOKE_TRIALS
    for child in children:
        assert child.data.params["dataset"] == "digits" and int(child.data.params["image_size"]) <= 32
        assert int(child.data.params["epochs"]) <= 2
        assert child.data.tags["status"] in ("completed", "stopped_early")
        assert child.data.tags["amp_dtype"] == "off"  # a CPU trial trains in float32, whatever amp says

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"results.csv", "best_config.yaml", "report.md", "report.csv", "sweep.yaml"} <= artifacts
    rows = read_results(client.download_artifacts(run_id, "results.csv", str(tmp_path)))
    assert sorted(r["mlflow_run_id"] for r in rows) == sorted(c.info.run_id for c in children)
    # each row's config is what the trial's run logged
    for row in rows:
        child = next(c for c in children if c.info.run_id == row["mlflow_run_id"])
        for key in sweep.spec.space:
            assert str(row[f"config.{key}"]) == child.data.params[key], key
        assert row["mask"] == child.data.tags["mask"]
    # the grid presets try distinct points of their grid
    if sweep.spec.search.algorithm == "grid":
        points = {tuple(str(r[f"config.{k}"]) for k in sweep.spec.space) for r in rows}
        assert len(points) == SMOKE_TRIALS

    # the report groups by the varied keys (seed averaged) and counts every finished trial once
    report = pd.read_csv(io.StringIO(_text(client, run_id, "report.csv", tmp_path)))
    assert report["trials"].sum() == sum(r["status"] in ("completed", "stopped_early") for r in rows)
    grouped_by = [k for k in sweep.spec.space if k != "seed"]
    assert [c for c in report.columns if not c.endswith(("_mean", "_std"))] == grouped_by + ["trials"]

    best = yaml.safe_load(_text(client, run_id, "best_config.yaml", tmp_path))
    assert best["trial"]["dataset"] == "digits" and best["search"]["num_samples"] == 1
    assert f"lslu-sweep report {parent.info.run_name}" in out


def test_insertion_resnet18_smoke_finds_masks_a_pareto_front_and_a_runnable_best_config(smoke_run, tmp_path):
    sweep = load_sweep("insertion_resnet18")
    client, parent, children, out = smoke_run("insertion_resnet18")
    _check_smoke_outputs("insertion_resnet18", client, parent, children, out, tmp_path)
    run_id = parent.info.run_id
    masks = [c.data.tags["mask"] for c in children]
    assert len(set(masks)) == SMOKE_TRIALS and all(len(m) == sweep.site_count == 17 for m in masks)
    # the first three are the paper's policies (points_to_evaluate), as masks of ResNet-18 with the CIFAR stem
    assert {"0" * 17, "1" * 17, "10000010001000100"} <= set(masks)
    for child in children:
        assert child.data.metrics["lslu_sites"] == child.data.tags["mask"].count("1")

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"pareto.png", "pareto.csv", "site_importance.csv"} <= artifacts
    rows = read_results(client.download_artifacts(run_id, "results.csv", str(tmp_path)))
    done = [r for r in rows if r["status"] in ("completed", "stopped_early")]
    # Optuna's importance needs the first objective to vary: a smoke run's trials can all sit at the same chance
    # accuracy
    assert ("param_importance.png" in artifacts) == (len(done) >= 3 and len({r["best_val_acc"] for r in done}) > 1)
    # the Pareto front, recomputed here: no finished trial is at least as accurate and at least as fast, and better
    # in one
    front = {
        r["trial_id"]
        for r in done
        if not any(
            o["best_val_acc"] >= r["best_val_acc"]
            and o["latency_ms"] <= r["latency_ms"]
            and (o["best_val_acc"], o["latency_ms"]) != (r["best_val_acc"], r["latency_ms"])
            for o in done
        )
    }
    pareto = pd.read_csv(
        io.StringIO(_text(client, run_id, "pareto.csv", tmp_path)), dtype={"mask": str, "trial_id": str}
    )
    assert set(pareto["trial_id"]) == front
    importance = pd.read_csv(io.StringIO(_text(client, run_id, "site_importance.csv", tmp_path)))
    assert list(importance["site"]) == [f"site_{i}" for i in range(17)]
    top = sorted(done, key=lambda r: -r["best_val_acc"])[: -(-len(done) // 4)]
    assert list(importance["on_in_top_quartile"]) == [
        sum(r["mask"][i] == "1" for r in top) / len(top) for i in range(17)
    ]

    # best_config.yaml is a sweep file that `lslu-sweep run` accepts and runs: one trial, the best trial's mask
    best_file = tmp_path / "best_config.yaml"
    best_file.write_text(_text(client, run_id, "best_config.yaml", tmp_path))
    best_row = max(done, key=lambda r: r["best_val_acc"])
    best = load_sweep(str(best_file))
    assert best.base.policy == "mask" and best.base.mask == best_row["mask"] and best.spec.search.num_samples == 1
    assert main(["run", str(best_file), "--tracking-uri", f"sqlite:///{tmp_path / 'best.db'}"]) == 0
    best_client = MlflowClient(f"sqlite:///{tmp_path / 'best.db'}")
    (_,), (rerun,) = _sweep_runs(best_client, best.name)
    assert rerun.data.tags["mask"] == best_row["mask"] and rerun.data.tags["status"] == "completed"
