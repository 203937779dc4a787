"""The one-shot insertion search end to end (issue 25's "done when"): ``lslu-sweep run insertion_resnet18_oneshot
--smoke-test`` as a user runs it, its driver SIGKILLed (with its embedded Ray) during the mask search, then
``lslu-sweep resume``: every phase ends once, and MLflow holds the supernet run, mask_search.csv, the retrained
candidates, oneshot_kendall_tau and oneshot_cost_trainings, each checked against what the runs themselves hold."""

import csv
import glob
import io
import json
import os
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from scipy.stats import kendalltau

from services import REPO

pytestmark = pytest.mark.slow
PRESET = "insertion_resnet18_oneshot"


def _cli(tmp_path, *args, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "orchestrator.cli", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, text=True, start_new_session=True, **popen)


def _manifest(tmp_path) -> tuple[Path, dict]:
    (path,) = glob.glob(str(tmp_path / "ray_results" / f"{PRESET}-smoke-*" / "lslu_sweep.json"))
    return Path(path), json.loads(Path(path).read_text())


def _kill_during_the_mask_search(tmp_path, timeout_s=600) -> str:
    """Start the sweep; SIGKILL its process group (driver and embedded Ray) once phase 2 has begun."""
    driver = _cli(tmp_path, "run", PRESET, "--smoke-test", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, deadline = [], time.monotonic() + timeout_s
    try:
        for line in driver.stdout:
            seen.append(line)
            if line.startswith("one-shot phase 2/3"):
                os.killpg(driver.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen[-50:])
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == -signal.SIGKILL, "".join(seen[-50:])
    _, manifest = _manifest(tmp_path)
    assert "supernet" in manifest["phases"] and "mask_search" not in manifest["phases"], manifest  # killed in phase 2
    return manifest["name"]


def test_a_oneshot_sweep_killed_during_its_mask_search_resumes_and_runs_each_phase_once(tmp_path):
    name = _kill_during_the_mask_search(tmp_path)
    resumed = _cli(tmp_path, "resume", name, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, (out[-3000:], err[-5000:])
    assert f"resuming sweep {name}" in out and "one-shot phase 1/3" not in out  # the supernet is not trained again
    assert "one-shot phase 2/3" in out and "one-shot phase 3/3: 2 candidate mask(s)" in out
    line = r"candidates, from the Pareto front over best_val_acc, latency_ms \(scored on the supernet\): "
    assert re.search(line + r"[01]+ \(best_val_acc [\d.]+, latency_ms [\d.e-]+\)", out), out[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    exp = client.get_experiment_by_name(PRESET)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_status"] == "finished"
    (supernet,) = [r for r in children if r.info.run_name == "supernet"]
    retrained = [r for r in children if r is not supernet]
    assert supernet.info.status == "FINISHED" and len(retrained) == 2
    assert parent.data.tags["oneshot_supernet_run_id"] == supernet.info.run_id
    # the supernet trained its two epochs once, with LSLU's θ/ω logged at every site, under the site's path
    assert [m.step for m in client.get_metric_history(supernet.info.run_id, "train_loss")] == [1, 2]
    assert supernet.data.tags["mask"] == "1" * 17  # every ResNet-18 site is eligible: a choice at each
    assert {f"theta/{p}/1" for p in ("act1", "layer1.0.act1", "layer4.1.act2")} <= set(supernet.data.metrics)
    (supernet_result,) = glob.glob(str(tmp_path / "ray_results" / name / "supernet" / "*" / "result.json"))
    assert [json.loads(line)["epoch"] for line in Path(supernet_result).read_text().splitlines()] == [1, 2]
    # each trial keeps only its latest checkpoint: the supernet's is the one the manifest records for phase 2
    trial_dirs = glob.glob(str(tmp_path / "ray_results" / name / "*" / "train_*"))
    assert len(trial_dirs) == 3 and all(len(glob.glob(f"{d}/checkpoint_*")) == 1 for d in trial_dirs), trial_dirs
    (supernet_checkpoint,) = glob.glob(str(tmp_path / "ray_results" / name / "supernet" / "*" / "checkpoint_*"))
    assert _manifest(tmp_path)[1]["phases"]["supernet"]["checkpoint"].endswith(supernet_checkpoint)

    # mask_search.csv: every scored mask once, the preset's three policies first, the retrained ones marked
    text = client.download_artifacts(parent.info.run_id, "mask_search.csv", str(tmp_path / "dl"))
    rows = list(csv.DictReader(io.StringIO(Path(text).read_text())))
    masks = [r["mask"] for r in rows]
    assert len(masks) == len(set(masks)) == 16  # the smoke test's eval_masks
    assert masks[:3] == ["0" * 17, "1" * 17, "10000010001000100"]
    assert all(int(r["lslu_sites"]) == r["mask"].count("1") for r in rows)
    chosen = sorted(r["mask"] for r in rows if r["retrained"] == "True")
    assert chosen == sorted(c.data.tags["mask"] for c in retrained)
    assert {"mask_search.png", "results.csv", "pareto.csv"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }

    # the candidates are the front of (supernet accuracy, latency): none of them dominated by another scored mask
    def dominated(r):
        acc, lat = float(r["val_acc"]), float(r["latency_ms"])
        return any(
            float(o["val_acc"]) >= acc
            and float(o["latency_ms"]) <= lat
            and (o["val_acc"], o["latency_ms"]) != (r["val_acc"], r["latency_ms"])
            for o in rows
        )

    assert not any(dominated(r) for r in rows if r["retrained"] == "True")

    # τ and the cost, recomputed from what the runs hold
    score = {r["mask"]: float(r["val_acc"]) for r in rows}
    standalone = {c.data.tags["mask"]: c.data.metrics["best_val_acc"] for c in retrained}
    tau = kendalltau([score[m] for m in chosen], [standalone[m] for m in chosen]).statistic
    assert parent.data.metrics["oneshot_kendall_tau"] == pytest.approx(tau, nan_ok=True)  # NaN: a side ties
    epochs = 2  # the smoke test's
    epochs_run = sum(len(client.get_metric_history(c.info.run_id, "train_loss")) for c in retrained)
    n_train, n_val = (int(retrained[0].data.params[k]) for k in ("train_samples", "val_samples"))
    per_mask = min(8 * int(retrained[0].data.params["batch_size"]), n_train) + n_val
    expected = 2 / epochs + 16 * per_mask / (3 * n_train * epochs) + epochs_run / epochs
    assert parent.data.metrics["oneshot_cost_trainings"] == pytest.approx(expected)
    assert f"one-shot: {expected:.2f} training-equivalents" in out
