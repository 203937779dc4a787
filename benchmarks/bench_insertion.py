"""How good is an insertion search? One-shot and black-box searches judged against the exhaustive truth (issue 25).

    python benchmarks/bench_insertion.py truth      # every mask trained standalone, 5 seeds → insertion_truth.csv
    python benchmarks/bench_insertion.py oneshot    # one supernet per search seed, every mask scored on it
    python benchmarks/bench_insertion.py compare    # both CSVs → the table of benchmarks/README.md

The network is ``benchmarks/insertion_net.py`` (6 sites, so 64 masks) on digits, LSLU n=1 at the masked sites,
``RECIPE`` below. ``truth`` trains each mask with each seed in worker processes (one thread each) with the project's
own ``Training`` loop, as a trial would. ``oneshot`` trains the supernet the way a one-shot sweep does
(``SupernetTraining``: one uniformly sampled mask per step, as many epochs as a trial) and scores every mask with
``orchestrator.mask_search.search_masks`` (64 masks are fewer than ``eval_masks``: it scores them all), which also
gives the scoring's cost in training-equivalents.

``compare`` replays the searches on the truth table, at equal compute counted in trainings: a black-box sweep
(random, TPE, NSGA-II, Optuna's samplers set up as ``orchestrator.search.make_sampler`` sets them for that budget)
with trial seed s sees, for each mask it trains, that mask's standalone result with seed s; it answers the best mask
it saw. One-shot answers the supernet's best mask (cost: the supernet, 1, plus the scoring), or retrains its top k
with trial seed s and answers the best of them (cost + k). Each answer is judged by the truth: its regret is the
exhaustive best mask's mean accuracy minus the answer's, in seed stds (the pooled std of a mask's accuracy over seeds).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SITES = 6
RECIPE = {  # the quickstart's recipe on the benchmark network; 10 epochs is where the masks' ranking has settled
    "model": "benchmarks.insertion_net:build",
    "dataset": "digits",
    "image_size": 16,
    "insert_act": "lslu",
    "n": 1,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 0.05,
    "epochs": 10,
    "warmup_epochs": 1,
    "batch_size": 64,
    "device": "cpu",
}
TRUTH_CSV, ONESHOT_CSV = HERE / "insertion_truth.csv", HERE / "insertion_oneshot.csv"


def all_masks() -> list[str]:
    return ["".join(bits) for bits in itertools.product("01", repeat=SITES)]


def _train(job: tuple[str, int, dict]) -> dict:
    """One standalone training of ``mask`` with ``seed`` (a worker process)."""
    import torch

    from trainables.config import TrialConfig
    from trainables.loop import Training

    mask, seed, recipe = job
    torch.set_num_threads(1)
    training = Training(TrialConfig.from_flat({**recipe, "policy": "mask", "mask": mask, "seed": seed}))
    while not training.done:
        metrics = training.run_epoch()
    return {"mask": mask, "seed": seed, "val_acc": metrics["val_acc"], "best_val_acc": training.best_val_acc}


def _supernet(job: tuple[int, dict]) -> list[dict]:
    """One supernet trained with ``seed`` and every mask scored on it (a worker process)."""
    import torch

    from orchestrator.mask_search import search_masks
    from trainables.config import TrialConfig
    from trainables.supernet import SupernetTraining

    seed, recipe = job
    torch.set_num_threads(1)
    config = {**recipe, "policy": "all", "seed": seed}
    start = time.perf_counter()
    training = SupernetTraining(TrialConfig.from_flat(config))
    while not training.done:
        training.run_epoch()
    trained = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"training": training.state_dict()}, Path(tmp) / "state.pt")
        found = search_masks(tmp, config, None, [("best_val_acc", "max")], "tpe", 2000, seed)
    return [
        {**r, "seed": seed, "cost_trainings": found["cost_trainings"], "train_s": trained, "score_s": found["seconds"]}
        for r in found["rows"]
    ]


def _write(path: Path, rows: list[dict], columns: list[str], command: str) -> None:
    with path.open("w", newline="") as f:
        f.write(f"# {command}\n")
        writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def truth(args) -> None:
    jobs = [(m, s, RECIPE) for m in all_masks() for s in range(args.seeds)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_train, jobs))
    _write(args.out, rows, ["mask", "seed", "val_acc", "best_val_acc"], _command(args))
    print(f"{len(rows)} trainings in {time.perf_counter() - start:.0f} s → {args.out}")


def oneshot(args) -> None:
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for found in pool.map(_supernet, [(s, RECIPE) for s in args.search_seeds]) for r in found]
    columns = ["seed", "mask", "val_acc", "val_loss", "latency_ms", "cost_trainings", "train_s", "score_s"]
    _write(args.out, rows, columns, _command(args))
    print(f"{len(args.search_seeds)} supernets in {time.perf_counter() - start:.0f} s → {args.out}")


def _command(args) -> str:
    return "python benchmarks/bench_insertion.py " + " ".join(sys.argv[1:])


class Truth:
    """The exhaustive table: per mask its accuracy for each seed, the mean, and the pooled seed std."""

    def __init__(self, rows: list[dict], metric: str = "best_val_acc"):
        self.by_seed: dict[str, dict[int, float]] = {}
        for r in rows:
            self.by_seed.setdefault(r["mask"], {})[int(r["seed"])] = float(r[metric])
        self.mean = {m: statistics.fmean(v.values()) for m, v in self.by_seed.items()}
        self.seeds = sorted(next(iter(self.by_seed.values())))
        self.std = math.sqrt(statistics.fmean(statistics.variance(v.values()) for v in self.by_seed.values()))
        self.best = max(self.mean, key=self.mean.get)

    def regret(self, mask: str) -> float:
        """How far ``mask``'s mean accuracy is below the exhaustive best, in seed stds."""
        return (self.mean[self.best] - self.mean[mask]) / self.std


def blackbox_pick(truth: Truth, algorithm: str, budget: int, search_seed: int) -> str:
    """The mask a black-box sweep of ``budget`` trials answers, replayed on the truth table (trial seed: one of the
    truth's seeds, by the search seed)."""
    import optuna

    from orchestrator.search import sampler_for
    from search_spaces.schema import default_population_size

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_seed = truth.seeds[search_seed % len(truth.seeds)]
    sampler = sampler_for(algorithm, budget, search_seed, default_population_size(budget))  # as a sweep sets it
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(budget):
        trial = study.ask()
        mask = "".join(str(trial.suggest_categorical(f"site_{i}", [0, 1])) for i in range(SITES))
        trial.set_user_attr("mask", mask)
        study.tell(trial, truth.by_seed[mask][trial_seed])
    return study.best_trial.user_attrs["mask"]


def oneshot_pick(truth: Truth, scores: dict[str, float], retrain: int, search_seed: int) -> str:
    """One-shot's answer: the supernet's best mask, or the best standalone result of its ``retrain`` best."""
    ranked = sorted(scores, key=scores.get, reverse=True)
    if retrain == 0:
        return ranked[0]
    trial_seed = truth.seeds[search_seed % len(truth.seeds)]
    return max(ranked[:retrain], key=lambda m: truth.by_seed[m][trial_seed])


def compare(args) -> None:
    from scipy.stats import kendalltau

    truth = Truth(_read(args.truth))
    shots: dict[int, dict] = {}
    for r in _read(args.oneshot):
        shot = shots.setdefault(int(r["seed"]), {"scores": {}, "cost": float(r["cost_trainings"])})
        shot["scores"][r["mask"]] = float(r[args.score]) * (-1 if args.score == "val_loss" else 1)  # higher: better
    means = sorted(truth.mean.values())
    stds = [statistics.stdev(v.values()) for v in truth.by_seed.values()]
    print(
        f"truth: {len(truth.mean)} masks × {len(truth.seeds)} seeds; best {truth.best} {truth.mean[truth.best]:.2f} %, "
        f"worst {min(truth.mean, key=truth.mean.get)} {means[0]:.2f} %; spread {means[-1] - means[0]:.2f} points, "
        f"pooled seed std {truth.std:.2f} (largest {max(stds):.2f}): "
        f"spread / std {(means[-1] - means[0]) / truth.std:.1f}"
    )
    taus = {
        s: kendalltau([shot["scores"][m] for m in truth.mean], list(truth.mean.values())).statistic
        for s, shot in shots.items()
    }
    print(
        f"one-shot: {len(shots)} supernets; Kendall tau (supernet score vs truth mean, all masks): median "
        f"{statistics.median(taus.values()):.2f} ({', '.join(f'{t:.2f}' for t in taus.values())})"
    )
    rows, scoring = [], statistics.fmean(shot["cost"] for shot in shots.values())
    for k in args.retrain:
        picks = [oneshot_pick(truth, shot["scores"], k, s) for s, shot in shots.items()]
        label = "one-shot, supernet's best" if k == 0 else f"one-shot, top {k} retrained"
        rows.append((label, 1 + scoring + k, picks))
    budgets = sorted(set(args.budgets) | {math.ceil(1 + scoring + k) for k in args.retrain})
    for algorithm, budget in itertools.product(("random", "tpe", "nsga2"), budgets):
        picks = [blackbox_pick(truth, algorithm, budget, s) for s in range(args.blackbox_seeds)]
        rows.append((f"black-box {algorithm}", budget, picks))
    print("\n| search | trainings | median regret (seed stds) | search seeds within 1 std | median pick's accuracy |")
    print("|---|---|---|---|---|")
    for label, cost, picks in rows:
        regrets = [truth.regret(m) for m in picks]
        within = sum(r <= 1 for r in regrets)
        print(
            f"| {label} | {cost:.2f} | {statistics.median(regrets):.2f} | {within}/{len(picks)} | "
            f"{statistics.median(truth.mean[m] for m in picks):.2f} % |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("truth", help="train every mask standalone")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=TRUTH_CSV)
    p = sub.add_parser("oneshot", help="one supernet per search seed, every mask scored on it")
    p.add_argument("--search-seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=ONESHOT_CSV)
    p = sub.add_parser("compare", help="the searches at equal compute, judged by the truth")
    p.add_argument("--truth", type=Path, default=TRUTH_CSV)
    p.add_argument("--oneshot", type=Path, default=ONESHOT_CSV)
    p.add_argument("--retrain", type=int, nargs="+", default=[0, 1, 3], help="one-shot: masks retrained (0: none)")
    p.add_argument("--budgets", type=int, nargs="+", default=[4, 8, 16], help="black-box: trainings")
    p.add_argument("--blackbox-seeds", type=int, default=10)
    p.add_argument("--score", choices=["val_acc", "val_loss"], default="val_acc", help="one-shot: the supernet's score")
    args = parser.parse_args(argv)
    {"truth": truth, "oneshot": oneshot, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
