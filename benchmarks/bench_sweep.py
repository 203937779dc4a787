"""bench_sweep.py: what the orchestration costs each trial, and how many short trials an hour a sweep runs.

    python benchmarks/bench_sweep.py                # 16-trial digits sweeps on the embedded local Ray, with and without actor reuse
    python benchmarks/bench_sweep.py --trials 32 --gpu 0.25    # on a GPU machine: four trials packed per GPU

Evidence it gives, per setting: the sweep's wall time (Tuner.fit, Ray already started), the trials' own training time
(the sum of their epoch times), the orchestration overhead per trial — idle slot-time per trial:
(wall × concurrent slots − Σ training time) / trials, i.e. everything that is not training — split into the part inside
the trainable function (Tune's time_total_s minus training: model and data set-up, MLflow logging, checkpoints) and the
part outside it (process or actor start, Tune's scheduling and bookkeeping, idle slots) — and trials per hour. Target (issue 9):
overhead ≤ 0.5 s per trial on the local default. Each setting logs to its own SQLite store in a temporary folder.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import table  # noqa: E402


def sweep_text(trials: int, concurrent: int, reuse: bool, cpu: float, gpu: float) -> str:
    return yaml.safe_dump({
        "name": f"bench-sweep-{'reuse' if reuse else 'fresh'}",
        "trial": {"model": "digits_cnn", "n": 1, "epochs": 1, "warmup_epochs": 0, "train_samples": 512, "val_samples": 256},
        "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}, "mask": {"type": "sites"}},
        "search": {"algorithm": "random", "num_samples": trials, "max_concurrent": concurrent, "scheduler": "none",
                   "reuse_actors": reuse},
        "resources": {"cpu": cpu, "gpu": gpu},
    })


def run(trials: int, concurrent: int, reuse: bool, cpu: float, gpu: float) -> dict:
    from orchestrator.driver import run_sweep
    from search_spaces.schema import parse_sweep

    text = sweep_text(trials, concurrent, reuse, cpu, gpu)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = parse_sweep(yaml.safe_load(text), text, "bench_sweep.yaml")
        start = time.perf_counter()
        outcome = run_sweep(sweep, tracking_uri=f"sqlite:///{tmp}/mlruns.db", storage=f"{tmp}/ray", echo=lambda *_: None)
        wall = time.perf_counter() - start
        train = sum(r.metrics.get("epoch_time_s", 0.0) for r in outcome.results)
        in_trial = sum(r.metrics.get("time_total_s", 0.0) for r in outcome.results)  # inside the trainable function
    slots = concurrent
    return {"actor reuse": reuse, "trials": trials, "slots": slots, "wall_s": wall, "train_s": train,
            "overhead_s_per_trial": (wall * slots - train) / trials,
            "in_trial_s": (in_trial - train) / trials,  # set-up, MLflow, figures, checkpoints: the trainable's own
            "outside_s": (wall * slots - in_trial) / trials,  # process or actor start, Tune's scheduling, idle slots
            "trials_per_hour": 3600 * trials / wall, "completed": sum(r["status"] == "completed" for r in outcome.rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=16)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--cpu", type=float, default=1.0)
    p.add_argument("--gpu", type=float, default=0.0)
    args = p.parse_args(argv)
    from cluster.local import connect

    start = time.perf_counter()
    where = connect()
    print(f"{where} started in {time.perf_counter() - start:.1f} s (once per sweep, not counted below)")
    rows = [run(args.trials, args.concurrent, reuse, args.cpu, args.gpu) for reuse in (False, True)]
    print(table(rows, ["actor reuse", "trials", "completed", "slots", "wall_s", "train_s", "overhead_s_per_trial", "in_trial_s",
                       "outside_s", "trials_per_hour"]))


if __name__ == "__main__":
    main()
