"""peer_sweep.py: the by-hand peer of a digits sweep, as a user writes it without lslu-sweep.

    python benchmarks/peer_sweep.py --trials 8 --tracking-uri sqlite:///…/mlruns.db --storage …/ray

Ray Tune's ``Tuner`` with ``OptunaSearch`` (a random sampler, as ``bench_sweep.py``'s sweeps search) and
``MLflowLoggerCallback`` on a plain torch function that trains the digits CNN of ``trainables/models/small_cnn.py``
(the same four conv–BN–ReLU sites, written out here) on the same data: scikit-learn's digits at 16×16, 512 training
and 256 validation images, one epoch, a checkpoint per epoch as Ray's own examples keep one. It imports nothing of
lslu-sweep, so what it costs is what Ray Tune, Optuna, MLflow and torch cost a user. ``bench_sweep.py --peer`` runs it
beside ``lslu-sweep run`` of the same sweep, each as a whole process, and compares their fixed and per-trial costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from ray import tune
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.search.optuna import OptunaSearch
from torch import nn


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def digits_cnn(dropout: float) -> nn.Module:
    return nn.Sequential(
        block(3, 16, 1), block(16, 32, 2), block(32, 32, 1), block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(64, 10),
    )  # fmt: skip


def digits(train_samples: int, val_samples: int):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8).repeat(1, 3, 1, 1) / 16.0
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False)
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:train_samples], order[-val_samples:]
    return x[train], y[train], x[val], y[val]


def train_digits(config: dict) -> None:
    """One trial: the CNN trained for ``epochs``, validation accuracy and a checkpoint reported after each."""
    torch.manual_seed(0)
    train_x, train_y, val_x, val_y = digits(512, 256)
    model = digits_cnn(config["dropout"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.05)
    for epoch in range(1, config["epochs"] + 1):
        start = time.perf_counter()
        model.train()
        for i in torch.randperm(len(train_y)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(train_x[i]), train_y[i]).backward()
            opt.step()
        epoch_time = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            val_acc = (model(val_x).argmax(1) == val_y).float().mean().item()
        with tempfile.TemporaryDirectory() as folder:
            torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
            metrics = {"val_acc": val_acc, "epoch": epoch, "epoch_time_s": epoch_time}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--reuse-actors", action="store_true", help="Tune's reuse_actors (default False, Tune's own)")
    p.add_argument("--tracking-uri", required=True)
    p.add_argument("--storage", required=True)
    args = p.parse_args(argv)
    import optuna

    tuner = tune.Tuner(
        tune.with_resources(train_digits, {"cpu": 1}),
        param_space={"lr": tune.loguniform(1e-3, 1e-2), "dropout": tune.uniform(0.0, 0.3), "epochs": args.epochs},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0), metric="val_acc", mode="max"),
            num_samples=args.trials,
            max_concurrent_trials=args.concurrent,
            reuse_actors=args.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name="peer-sweep",
            storage_path=args.storage,
            callbacks=[MLflowLoggerCallback(tracking_uri=args.tracking_uri, experiment_name="peer-sweep")],
        ),
    )
    best = tuner.fit().get_best_result(metric="val_acc", mode="max")
    print(f"best: val_acc {best.metrics['val_acc']:.4f} with {best.config}")


if __name__ == "__main__":
    main()
