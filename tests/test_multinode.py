"""A real multi-node Ray cluster on this machine (a head and two workers, ``ray.cluster_utils.Cluster`` in its own
process), a real MLflow server started by ``cluster/mlflow_server.sh`` on a throwaway PostgreSQL, and the real
``lslu-sweep`` CLI joining the cluster with ``--address``. Everything is read back over HTTP with MlflowClient.
"""

import csv
import glob
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services import REPO, RayCluster, script_server
from tiny_datasets import write_factory_package

pytestmark = pytest.mark.slow
EPOCHS = 6
SWEEP = """
name: {name}
trial: {{epochs: {epochs}, n: 1, batch_size: 128, warmup_epochs: 0}}
space:
  lr: {{type: float, low: 3.0e-3, high: 6.0e-3}}
search: {{num_samples: 2, max_concurrent: 2, scheduler: none, max_failures: 2, seed: 0}}
resources: {{cpu: 1}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray_cluster = RayCluster(tmp_path_factory.mktemp("cluster") / "cluster.log", workers=2)
    try:
        yield ray_cluster
    finally:
        ray_cluster.shutdown()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    where = tmp_path_factory.mktemp("mlflow")
    proc = script_server(postgres.uri, where / "artifacts", where / "server.log")
    try:
        yield proc.start()
    finally:
        proc.stop()


def _sweep_file(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(SWEEP.format(name=name, epochs=EPOCHS)))
    return str(path)


def _cli(tmp_path, *args):
    """The CLI as a user runs it; its own process, so it joins the cluster as a separate driver."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _user_project(tmp_path, package: str) -> Path:
    """A user's folder outside the project: its data factory and its network (tests/user_project_nets.py)."""
    user = write_factory_package(tmp_path / "user_project", package)
    (user / package / "nets.py").write_text((Path(__file__).parent / "user_project_nets.py").read_text())
    return user


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_local_tracking_store_is_refused_before_any_trial(cluster, tmp_path):
    # no --tracking-uri: the default, sqlite:///mlruns.db in the working directory, is what users forget
    rc, out, err = _finish(
        _cli(tmp_path, _sweep_file(tmp_path, "local"), "--address", cluster.address, "--storage", "ray")
    )
    assert rc == 2, (out, err)
    assert f"error: --tracking-uri: sqlite:///{tmp_path / 'mlruns.db'} is a local store" in err
    assert "this Ray cluster has 3 nodes and trials on the others cannot write to it" in err
    assert "cluster/mlflow_server.sh" in err and "--tracking-uri http://" in err
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "ray").exists()  # nothing was started


def test_storage_a_node_cannot_see_is_refused(cluster, server, tmp_path):
    """A worker in its own mount namespace, with an empty tmpfs over the storage path: it cannot see the driver's
    files."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("hiding the storage from one node needs a private mount namespace (unshare -m, as root)")
    storage = tmp_path / "storage"
    storage.mkdir()
    before = set(cluster.alive())
    ray_bin = Path(sys.executable).parent / "ray"
    inner = (
        f"mount -t tmpfs lslu-hidden {shlex.quote(str(storage))} && "
        f"exec {shlex.quote(str(ray_bin))} start --address {cluster.address} --num-cpus 1 --block"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    node = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", inner],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "hidden-node.log", "w"),
        start_new_session=True,
    )
    try:
        (hidden,) = set(cluster.wait_alive(len(before) + 1, timeout_s=120)) - before
        rc, out, err = _finish(
            _cli(
                tmp_path,
                _sweep_file(tmp_path, "hidden"),
                "--address",
                cluster.address,
                "--tracking-uri",
                server.uri,
                "--storage",
                str(storage),
            )
        )
        assert rc == 2, (out, err)
        assert f"error: --storage: {storage} is not shared by every Ray node (node {hidden[:12]} " in err
        assert "is not there: this node does not see the driver's storage" in err and "s3://" in err
        assert not [w for w in cluster.workers if w[:12] in err]  # the nodes that share the storage are not named
        assert MlflowClient(server.uri).get_experiment_by_name("hidden") is None  # refused before MLflow
        assert not list(storage.glob("hidden-*"))
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # `ray start --block` stops its node's processes on SIGTERM
            try:
                os.killpg(node.pid, sig)
                node.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        cluster.wait_alive(len(before), timeout_s=120)


def test_a_users_own_package_reaches_every_worker_through_runtime_env(cluster, server, tmp_path):
    """A user's network and data factory in a folder outside the project, a sweep file beside it with
    ``runtime_env: {working_dir: .}``, started from another directory: the package exists only where Ray ships it."""
    package = "lslu_user_e2e"
    user = _user_project(tmp_path, package)
    (user / "sweep.yaml").write_text(
        textwrap.dedent(f"""
        name: userpackage
        trial: {{model: '{package}.nets:build', dataset: '{package}.data:build', data_args: {{n: 48, classes: 3}},
                insert_act: lslu, policy: downsampling, image_size: 12, epochs: 2, warmup_epochs: 0, batch_size: 16,
                workers: 0}}
        space: {{n: [1, 2]}}
        search: {{algorithm: grid, max_concurrent: 2, scheduler: none}}
        resources: {{cpu: 1}}
        runtime_env: {{working_dir: .}}
    """)
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out, err = _finish(
        _cli(
            elsewhere,
            str(user / "sweep.yaml"),
            "--address",
            cluster.address,
            "--tracking-uri",
            server.uri,
            "--storage",
            str(tmp_path / "storage"),
        )
    )
    assert rc == 0, (out[-3000:], err[-5000:])
    assert "trials: 2 (2 completed)" in out
    assert "search.max_failures: 3 (a cluster of 3 nodes" in out  # the file leaves it out: a cluster's default
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("userpackage")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.params["n"] for c in children) == ["1", "2"]
    assert {c.data.tags["ray_node_id"] for c in children} <= set(cluster.workers)
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "completed"
        sites = list(
            csv.DictReader(
                io.StringIO(
                    open(
                        client.download_artifacts(child.info.run_id, "sites.csv", str(tmp_path / child.info.run_id))
                    ).read()
                )
            )
        )
        # the user's network as the traced forward saw it: stages where the resolution halves, the MLP's GELU on
        # (B, H, W, C), and LSLU at the downsampling sites (the stem and each stage's first block)
        columns = ("path", "stage", "channels", "layout", "downsampling", "inserted")
        assert [tuple(s[c] for c in columns) for s in sites] == [
            ("stem.act", "0", "8", "nchw", "True", "1"),
            ("stages.0.0.act", "1", "16", "nchw", "True", "1"),
            ("stages.0.1.act", "1", "32", "nhwc", "False", "0"),
            ("stages.1.0.act", "2", "32", "nchw", "True", "1"),
        ]
        assert child.data.tags["mask"] == "1101" and len(client.get_metric_history(child.info.run_id, "val_acc")) == 2


def test_sweep_survives_a_lost_worker_node(cluster, server, tmp_path):
    storage = tmp_path / "storage"
    client = MlflowClient(server.uri)
    t0 = time.monotonic()
    driver = _cli(
        tmp_path,
        _sweep_file(tmp_path, "multinode"),
        "--address",
        cluster.address,
        "--tracking-uri",
        server.uri,
        "--storage",
        str(storage),
    )
    try:
        victim = _kill_node_of_a_running_trial(cluster, client, driver)
        rc, out, err = _finish(driver)
    finally:
        if driver.poll() is None:
            driver.kill()
    elapsed = time.monotonic() - t0
    assert rc == 0, (out, err[-5000:])
    assert "(3 nodes)" in out and "trials: 2 (2 completed)" in out

    # MLflow: one parent, one child run per trial, each epoch exactly once, none left RUNNING
    exp = client.get_experiment_by_name("multinode")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and len({c.data.tags["trial_id"] for c in children}) == 2
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (survivor,) = cluster.workers
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["status"] == "completed"
        for key in ("train_loss", "val_loss", "val_acc", "theta/stages.0.act/1"):
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (child.data.tags["trial_id"], key, steps)
        assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"config.yaml", "theta_omega.png"}
    killed = next(c for c in children if c.data.tags["trial_id"] == victim["trial_id"])
    assert killed.data.tags["ray_node_id"] == survivor  # its run was reopened on the node that is left
    # the artifacts of this experiment's two trials, proxied into the server's store
    configs = server.log.parent / "artifacts" / exp.experiment_id / "*" / "artifacts" / "config.yaml"
    assert len(glob.glob(str(configs))) == 2

    # Ray Tune's record of the interrupted trial: trained on the lost node, then continued on the other from a
    # checkpoint (its first epoch there is not epoch 1, and no epoch is skipped). Tune may hold the epoch the node died
    # in twice (reported from the lost node, its checkpoint not yet registered, trained again: CI saw 1, 2, 3, 3, ...),
    # and the node may finish an epoch after the MLflow read in _kill_node_of_a_running_trial (CI: read 2, Tune had 3);
    # MLflow holds each epoch once (checked above)
    rows = _tune_results(storage, victim["trial_id"])
    nodes = [r["node_id"] for r in rows]
    moved_at = nodes.index(survivor)
    assert set(nodes[:moved_at]) == {victim["node_id"]} and set(nodes[moved_at:]) == {survivor}
    before, after = [r["epoch"] for r in rows[:moved_at]], [r["epoch"] for r in rows[moved_at:]]
    assert before == list(range(1, len(before) + 1)) and after == list(range(after[0], EPOCHS + 1))
    assert 2 <= after[0] <= before[-1] + 1, (before, after)
    print(
        f"multi-node sweep: {elapsed:.0f} s; trial {victim['trial_id']} lost its node after epoch "
        f"{before[-1]} and continued at epoch {after[0]}"
    )


def _kill_node_of_a_running_trial(cluster, client, driver, timeout_s=420) -> dict:
    """Once a trial has logged its second epoch, remove (SIGKILL) the worker node it runs on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError(f"the sweep ended before a node could be removed:\n{driver.communicate()}")
        exp = client.get_experiment_by_name("multinode")
        for run in client.search_runs([exp.experiment_id]) if exp else []:
            node_id = run.data.tags.get("ray_node_id")
            if node_id not in cluster.workers or run.info.status != "RUNNING":
                continue
            logged = len(client.get_metric_history(run.info.run_id, "train_loss"))
            if 2 <= logged < EPOCHS:
                cluster.remove(node_id)
                # the trial may have finished another epoch between the read above and the kill: count again
                # now that its node is gone (an epoch is logged to MLflow before it is reported to Tune)
                logged = len(client.get_metric_history(run.info.run_id, "train_loss"))
                return {"trial_id": run.data.tags["trial_id"], "node_id": node_id, "logged_epochs": logged}
        time.sleep(0.3)
    raise AssertionError(f"no trial reached epoch 2 within {timeout_s} s")


def _tune_results(storage: Path, trial_id: str) -> list[dict]:
    """The results Tune recorded for one trial (its result.json), in order."""
    (path,) = glob.glob(str(storage / "multinode-*" / f"*_{trial_id}" / "result.json"))
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_a_oneshot_sweep_runs_its_three_phases_on_the_workers(cluster, server, tmp_path):
    """The one-shot strategy on the cluster, with a user's network (one of its sites channels-last, so LSLU sits in
    the supernet through the permuting adapter): the supernet trial, the mask search task and the retrained
    candidates all run on worker nodes (the head has no CPUs), and MLflow on the server holds each phase."""
    package = "lslu_user_oneshot"
    user = _user_project(tmp_path, package)
    (user / "sweep.yaml").write_text(
        textwrap.dedent(f"""
        name: oneshotcluster
        trial: {{model: '{package}.nets:build', dataset: '{package}.data:build', data_args: {{n: 48, classes: 3}},
                insert_act: lslu, n: 1, image_size: 12, epochs: 2, warmup_epochs: 0, batch_size: 16, workers: 0}}
        space: {{mask: {{type: sites}}}}
        search: {{strategy: oneshot, algorithm: nsga2, metric: [best_val_acc, latency_ms], eval_masks: 6, candidates: 2,
                 scheduler: none, max_concurrent: 2}}
        resources: {{cpu: 1}}
        runtime_env: {{working_dir: .}}
    """)
    )
    args = ("--address", cluster.address, "--tracking-uri", server.uri, "--storage", str(tmp_path / "storage"))
    rc, out, err = _finish(_cli(tmp_path, str(user / "sweep.yaml"), *args))
    assert rc == 0, (out[-3000:], err[-5000:])
    assert "trials: 2 (2 completed)" in out and "mask search: 6 masks scored" in out
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("oneshotcluster")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (supernet,) = [r for r in children if r.info.run_name == "supernet"]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["ray_node_id"] for c in children} | {parent.data.tags["mask_search_node_id"]} <= set(
        cluster.workers
    )
    assert supernet.data.tags["mask"] == "1111"  # the channels-last site has a choice too
    assert len(client.get_metric_history(supernet.info.run_id, "theta/stages.0.1.act/1")) == 2
    assert {"mask_search.csv", "mask_search.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "oneshot_kendall_tau" in parent.data.metrics and "oneshot_cost_trainings" in parent.data.metrics
