"""Whole sweeps on a user's data: a torchvision class from its own files, and a user's factory outside the project
reaching the workers through the sweep file's ``runtime_env`` (a sweep started from another directory)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.driver import run_sweep
from search_spaces.schema import parse_sweep
from tiny_datasets import write_factory_package, write_fashion_mnist

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[1]


def _children(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_a_fashion_mnist_sweep_from_its_own_files(ray_local, tmp_path, tracking_uri):
    root = write_fashion_mnist(tmp_path / "data", n_train=20, n_test=10)
    text = textwrap.dedent(f"""
        name: fashion
        trial: {{dataset: 'torchvision.datasets:FashionMNIST', data_dir: '{root}', model: digits_cnn, n: 1,
                epochs: 1, warmup_epochs: 0, batch_size: 10, workers: 0}}
        search: {{algorithm: random, num_samples: 1, max_concurrent: 1, scheduler: none}}
    """)
    sweep = parse_sweep(yaml.safe_load(text), text, str(tmp_path / "fashion.yaml"))
    outcome = run_sweep(sweep, tracking_uri=tracking_uri, storage=str(tmp_path / "ray"))
    assert [r["status"] for r in outcome.rows] == ["completed"]
    (child,) = _children(tracking_uri, "fashion")
    assert child.data.params["dataset"] == "torchvision.datasets:FashionMNIST"
    assert child.data.tags["status"] == "completed" and child.info.status == "FINISHED"
    assert [m.step for m in MlflowClient(tracking_uri).get_metric_history(child.info.run_id, "val_acc")] == [1]


def test_a_user_factory_outside_the_project_runs_through_runtime_env_from_another_directory(tmp_path):
    package = "lslu_user_data_e2e"  # importable only from the sweep file's folder, never from the project
    user = write_factory_package(tmp_path / "user_project", package)
    (user / "sweep.yaml").write_text(
        textwrap.dedent(f"""
        name: userfactory
        trial: {{dataset: '{package}.data:build', data_args: {{n: 24, classes: 3}}, model: digits_cnn, n: 1,
                epochs: 1, warmup_epochs: 0, batch_size: 8, workers: 0}}
        search: {{algorithm: random, num_samples: 1, max_concurrent: 1, scheduler: none}}
        resources: {{cpu: 1}}
        runtime_env: {{working_dir: .}}
    """)
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}  # the project as if installed; the user's code is not on it
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            str(user / "sweep.yaml"),
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "ray"),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (child,) = _children(uri, "userfactory")
    assert child.data.tags["status"] == "completed"
    params = child.data.params
    assert params["dataset"] == f"{package}.data:build" and (params["data_args.n"], params["data_args.classes"]) == (
        "24",
        "3",
    )


def test_the_your_own_network_preset_runs_from_another_directory(tmp_path):
    """The example project (examples/my_project) as the preset a user starts from: its runtime_env ships the package,
    so the CLI in its own process (its own Ray) runs the smoke test from anywhere."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}  # the project as if installed; examples/ is not on the path
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            "your_own_network",
            "--smoke-test",
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "ray"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    children = _children(uri, "your_own_network")
    assert children and all(c.data.params["model"] == "my_project.nets:build" for c in children)
    assert {c.data.tags["status"] for c in children} <= {"completed", "stopped_early"}
