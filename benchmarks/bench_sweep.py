"""bench_sweep.py: what the orchestration costs each trial, and how many short trials an hour a sweep runs.

    python benchmarks/bench_sweep.py                # digits sweeps on the embedded local Ray: 8 and 32 trials with
                                                    # actor reuse, 8 without
    python benchmarks/bench_sweep.py --repeat 3 --fresh-trials 0    # the two sizes three times, alternately: median
                                                                    # and range
    python benchmarks/bench_sweep.py --packing 1 2 4    # on a GPU machine: 1, 2 and 4 trials per GPU; GPU busy time
    python benchmarks/bench_sweep.py --packing 1 4 --trial epochs=3 batch_size=256    # ... with the small model changed

Evidence it gives, per sweep: its wall time (``run_sweep``, Ray already started; everything from the parent run to the
sweep's plots), the trials' own training time (the sum of their epoch times), and the orchestration overhead per
trial — idle slot-time per trial: (wall × concurrent slots − Σ training time) / trials, i.e. everything that is not
training — split into the part inside the trainable function (Tune's time_total_s minus training: model and data
set-up, MLflow logging, checkpoints) and the part outside it (actor start, Tune's scheduling, the driver's figures
and sweep plots, idle slots); the CPU time the driver's figure thread spent per trial; trials per hour.

A sweep's overhead is a fixed part (the first worker processes and their imports, the parent run, the figures of the
last trials and the sweep's plots at the end) plus a part per trial. Two sweep sizes with actor reuse separate them:
the marginal overhead per trial is the difference of their overheads over the difference of their trial counts, and
the fixed part is what remains. Target (issue 9): overhead ≤ 0.5 s per trial on the local default. Each sweep logs to
its own SQLite store in a temporary folder. A single pair varies by about ±0.1 s per trial on a 2-core machine (the
small sweep's wall time is mostly fixed cost, and its noise is divided by the difference in trials only), so
``--repeat`` runs the pair several times, alternately, splits the medians of each size, and shows the range single
pairs give.

On a GPU machine, ``--packing K …`` runs the same sweep of small models (ResNet-18 with the CIFAR stem on synthetic
32×32 images unless ``--trial`` says otherwise) with K trials per GPU (``gpu: 1/K``, K × GPUs concurrent), each in its
own driver process, and reports the GPUs' busy time as NVML samples it every 0.1 s (common.GpuBusy): over the whole
sweep, and from the first busy sample to the last (without Ray's start-up and the closing plots). Target (issue 9):
≥ 85 % busy across a sweep by packing trials.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import GpuBusy, nvml, table  # noqa: E402

DIGITS_TRIAL = {
    "model": "digits_cnn",
    "n": 1,
    "epochs": 1,
    "warmup_epochs": 0,
    "train_samples": 512,
    "val_samples": 256,
}
# --packing's small model: a few seconds of GPU work a trial, so that packing, not start-up, decides the busy time
SMALL_MODEL = {
    "model": "resnet18",
    "cifar_stem": True,
    "dataset": "synthetic",
    "image_size": 32,
    "train_samples": 8192,
    "val_samples": 1024,
    "batch_size": 128,
    "epochs": 2,
}


def sweep_text(trials: int, concurrent: int, reuse: bool, cpu: float, gpu: float, trial: dict | None = None) -> str:
    return yaml.safe_dump(
        {
            "name": f"bench-sweep-{'reuse' if reuse else 'fresh'}",
            "trial": {**DIGITS_TRIAL, **(trial or {})},
            "space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}, "mask": {"type": "sites"}},
            "search": {
                "algorithm": "random",
                "num_samples": trials,
                "max_concurrent": concurrent,
                "scheduler": "none",
                "reuse_actors": reuse,
            },
            "resources": {"cpu": cpu, "gpu": gpu},
        }
    )


def run(trials: int, concurrent: int, reuse: bool, cpu: float, gpu: float, trial: dict | None = None) -> dict:
    from orchestrator.driver import run_sweep
    from orchestrator.figures import figure_queue
    from search_spaces.schema import parse_sweep

    text = sweep_text(trials, concurrent, reuse, cpu, gpu, trial)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = parse_sweep(yaml.safe_load(text), text, "bench_sweep.yaml")
        uri = f"sqlite:///{tmp}/mlruns.db"
        start = time.perf_counter()
        with GpuBusy() as gpus:
            outcome = run_sweep(sweep, tracking_uri=uri, storage=f"{tmp}/ray", echo=lambda *_: None)
        wall = time.perf_counter() - start
        train = sum(r.metrics.get("epoch_time_s", 0.0) for r in outcome.results)
        in_trial = sum(r.metrics.get("time_total_s", 0.0) for r in outcome.results)  # inside the trainable function
        figures_cpu = figure_queue(uri).cpu_s
    slots = concurrent
    return {
        "actor reuse": reuse,
        "trials": trials,
        "slots": slots,
        "wall_s": wall,
        "train_s": train,
        "idle_slot_s": wall * slots - train,
        "overhead_s_per_trial": (wall * slots - train) / trials,
        "in_trial_s": (in_trial - train) / trials,  # set-up, MLflow, checkpoints: the trainable's own
        # actor start, Tune's scheduling, the driver's figures, idle slots
        "outside_s": (wall * slots - in_trial) / trials,
        # the driver's figure thread, per trial (it shares the machine's cores)
        "figures_cpu_s": figures_cpu / trials,
        "trials_per_hour": 3600 * trials / wall,
        "completed": sum(r["status"] == "completed" for r in outcome.rows),
        "gpu_busy_%": gpus.busy_pct,
        "gpu_active_%": gpus.active_pct,
    }


def split_fixed_marginal(small: dict, large: dict) -> tuple[float, float]:
    """(fixed overhead per sweep in wall seconds, marginal overhead per trial in slot-seconds) from two sweep sizes."""
    marginal = (large["idle_slot_s"] - small["idle_slot_s"]) / (large["trials"] - small["trials"])
    fixed = (small["idle_slot_s"] - marginal * small["trials"]) / small["slots"]
    return fixed, marginal


def run_whole(tool: str, trials: int, args) -> dict:
    """One sweep as a user starts it, a whole process timed from its start to its exit (imports, Ray's start, the
    parent run, the end of the sweep included): ``lslu-sweep run`` of the digits sweep, or the by-hand peer
    (``peer_sweep.py``: Ray Tune + OptunaSearch + MLflowLoggerCallback on the same CNN and data). The trials' training
    time is read back from the MLflow store each wrote (every run's ``epoch_time_s`` history)."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        uri, storage = f"sqlite:///{tmp}/mlruns.db", f"{tmp}/ray"
        if tool == "lslu-sweep":
            (Path(tmp) / "sweep.yaml").write_text(sweep_text(trials, args.concurrent, True, 1.0, 0.0, args.trial))
            lslu_sweep = Path(sys.executable).with_name("lslu-sweep")
            command = [str(lslu_sweep), "run", f"{tmp}/sweep.yaml", "--tracking-uri", uri, "--storage", storage]
        else:
            peer = Path(__file__).with_name("peer_sweep.py")
            command = [sys.executable, str(peer), "--trials", str(trials), "--concurrent", str(args.concurrent)]
            command += ["--epochs", str(args.trial.get("epochs", 1)), "--tracking-uri", uri, "--storage", storage]
            command += ["--reuse-actors"] if tool == "peer, reusing actors" else []
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        wall = time.perf_counter() - start
        client = MlflowClient(uri)
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        train = sum(m.value for r in runs for m in client.get_metric_history(r.info.run_id, "epoch_time_s"))
        finished = sum("epoch_time_s" in r.data.metrics for r in runs)
    idle = wall * args.concurrent - train
    return {"tool": tool, "trials": trials, "completed": finished, "slots": args.concurrent, "wall_s": wall,
            "train_s": train, "idle_slot_s": idle, "overhead_s_per_trial": idle / trials}  # fmt: skip


def against_peer(args) -> None:
    """lslu-sweep against the by-hand peer, both as whole processes, two sweep sizes, alternately: fixed cost per
    sweep and overhead per additional trial of each, and lslu-sweep's as a ratio of the peer's."""
    tools = ["lslu-sweep", "peer", "peer, reusing actors"]
    runs = [[[run_whole(tool, n, args) for n in args.peer_trials] for tool in tools] for _ in range(args.repeat)]
    rows = [row for one in runs for pair in one for row in pair]
    print(table(rows, ["tool", "trials", "completed", "wall_s", "train_s", "overhead_s_per_trial"]))
    split = {}
    for t, tool in enumerate(tools):
        pairs = [one[t] for one in runs]
        split[tool] = split_fixed_marginal(*(median_row([pair[k] for pair in pairs]) for k in (0, 1)))
        print(f"{tool}: {split[tool][0]:.1f} s fixed per sweep (wall), {split[tool][1]:.2f} s per additional trial "
              f"(slot-seconds){spread([split_fixed_marginal(*pair) for pair in pairs])}")  # fmt: skip
    fixed, marginal = split["lslu-sweep"]
    for tool in tools[1:]:
        print(f"lslu-sweep against the {tool}: fixed cost {fixed / split[tool][0]:.2f}×, per additional trial "
              f"{marginal / split[tool][1]:.2f}× (target: fixed ≤ 1.00×)")  # fmt: skip


def run_apart(trials: int, args, reuse: bool, concurrent: int | None = None, gpu: float | None = None) -> dict:
    """One sweep in a driver process of its own, as ``lslu-sweep run`` starts one: what a driver builds once (its
    imports, its figure process) counts to the sweep. Ray's start is timed apart and not counted."""
    concurrent, gpu = concurrent or args.concurrent, args.gpu if gpu is None else gpu
    command = [
        sys.executable,
        __file__,
        "--one",
        str(trials),
        "--concurrent",
        str(concurrent),
        "--cpu",
        str(args.cpu),
        "--gpu",
        str(gpu),
        "--trial-json",
        json.dumps(args.trial),
    ] + ([] if reuse else ["--fresh"])
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--trials",
        type=int,
        nargs=2,
        default=[8, 32],
        metavar=("SMALL", "LARGE"),
        help="the two sweep sizes run with actor reuse",
    )
    p.add_argument("--fresh-trials", type=int, default=8, help="trials of the sweep without actor reuse (0: skip it)")
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--cpu", type=float, default=1.0)
    p.add_argument("--gpu", type=float, default=0.0)
    p.add_argument("--repeat", type=int, default=1, help="run the two sizes this many times, alternately")
    p.add_argument(
        "--packing",
        type=int,
        nargs="+",
        metavar="K",
        help="GPU machine: a sweep of small models with K trials per GPU, for each K; reports GPU busy time",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="lslu-sweep run against the by-hand peer (peer_sweep.py), whole processes: fixed and per-trial cost",
    )
    p.add_argument("--peer-trials", type=int, nargs=2, default=[8, 24], metavar=("SMALL", "LARGE"))
    p.add_argument("--packing-trials", type=int, default=16, help="trials of each --packing sweep")
    p.add_argument(
        "--trial",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="trial config keys over the sweep's own (digits; with --packing the small model), values in YAML",
    )
    # run one sweep of this many trials here, print its row as JSON
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trial-json", help=argparse.SUPPRESS)  # --one: the trial's keys, as the parent resolved them
    args = p.parse_args(argv)
    if args.trial_json:
        args.trial = json.loads(args.trial_json)
    else:
        args.trial = trial_overrides(args.trial, SMALL_MODEL if args.packing else {})
    if args.one:
        from cluster.local import connect

        start = time.perf_counter()
        where = connect()
        print(f"{where} started in {time.perf_counter() - start:.1f} s (not counted)", file=sys.stderr)
        row = run(args.one, args.concurrent, not args.fresh, args.cpu, args.gpu, args.trial)
        print(json.dumps(row))
        return
    check_sweep(args)
    if args.peer and set(args.trial) - {"epochs"}:  # the peer's network, data and recipe are written out in it
        raise SystemExit(f"--trial with --peer takes only epochs (peer_sweep.py writes out the rest), got {args.trial}")
    if args.peer:
        return against_peer(args)
    if args.packing:
        return packing(args)
    pairs = [[run_apart(n, args, reuse=True) for n in args.trials] for _ in range(args.repeat)]
    rows = [row for pair in pairs for row in pair]
    if args.fresh_trials:
        rows.append(run_apart(args.fresh_trials, args, reuse=False))
    print(
        table(
            rows,
            [
                "actor reuse",
                "trials",
                "completed",
                "slots",
                "wall_s",
                "train_s",
                "overhead_s_per_trial",
                "in_trial_s",
                "outside_s",
                "figures_cpu_s",
                "trials_per_hour",
            ],
        )
    )
    fixed, marginal = split_fixed_marginal(*(median_row([pair[k] for pair in pairs]) for k in (0, 1)))
    singles = [split_fixed_marginal(*pair) for pair in pairs]
    figures = statistics.median(pair[1]["figures_cpu_s"] for pair in pairs)
    print(
        f"with actor reuse: {marginal:.2f} s of overhead per additional trial (slot-seconds; target ≤ 0.5), "
        f"{fixed:.1f} s fixed per sweep (wall){spread(singles)}; "
        f"the driver's figures take {figures:.2f} s CPU a trial"
    )


def trial_overrides(pairs: list[str], base: dict) -> dict:
    """``base`` with each KEY=VALUE (the value read as YAML: 3, true, 1e-3) over it."""
    out = dict(base)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--trial takes KEY=VALUE pairs (e.g. epochs=3), got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def check_sweep(args) -> None:
    """The sweep the runs will start, validated here first: a bad --trial key fails before any sweep starts."""
    from search_spaces.schema import SpecError, parse_sweep

    text = sweep_text(args.packing_trials, args.concurrent, True, args.cpu, args.gpu, args.trial)
    try:
        parse_sweep(yaml.safe_load(text), text, "bench_sweep.yaml")
    except SpecError as exc:
        raise SystemExit(f"--trial: {exc}") from None


def packing(args) -> None:
    """The same sweep with K trials per GPU for each K: GPU busy time and trials per hour against one trial per GPU."""
    lib = nvml()
    gpus = 0
    if lib is not None:
        gpus = lib.nvmlDeviceGetCount()
        lib.nvmlShutdown()
    if not gpus:
        raise SystemExit("--packing needs an NVIDIA GPU (NVML found none)")
    rows = []
    for k in args.packing:
        row = run_apart(args.packing_trials, args, reuse=True, concurrent=k * gpus, gpu=1.0 / k)
        rows.append({"trials per GPU": k, **row})
    base = rows[0]["trials_per_hour"]
    for row in rows:
        row["speed-up"] = row["trials_per_hour"] / base
    print(f"{gpus} GPU(s); each trial: {', '.join(f'{k}={v}' for k, v in args.trial.items())}")
    print(
        table(
            rows,
            [
                "trials per GPU",
                "trials",
                "completed",
                "wall_s",
                "train_s",
                "overhead_s_per_trial",
                "trials_per_hour",
                "speed-up",
                "gpu_busy_%",
                "gpu_active_%",
            ],
        )
    )
    best = max(rows, key=lambda r: r["gpu_active_%"] or 0)
    print(
        f"GPU busy {best['gpu_active_%']:.0f} % from the first kernel to the last "
        f"({best['gpu_busy_%']:.0f} % of the whole sweep) with {best['trials per GPU']} trials per GPU "
        f"(target ≥ 85 %), {best['speed-up']:.2f}× the trials an hour of "
        f"{rows[0]['trials per GPU']} per GPU (first row; {args.packing_trials} trials per sweep)"
    )


def median_row(rows: list[dict]) -> dict:
    """The sweeps of one size as one: their median idle slot-time."""
    return {**rows[0], "idle_slot_s": statistics.median(r["idle_slot_s"] for r in rows)}


def spread(singles: list[tuple[float, float]]) -> str:
    """What single pairs of sweeps give, when there are several: the machine's noise in this split."""
    if len(singles) < 2:
        return ""
    fixed, marginal = zip(*singles)
    return (
        f" — from the medians of {len(singles)} sweeps of each size; "
        f"single pairs give {min(marginal):.2f}–{max(marginal):.2f} s "
        f"per trial and {min(fixed):.1f}–{max(fixed):.1f} s fixed"
    )


if __name__ == "__main__":
    main()
