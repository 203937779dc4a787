"""bench_bn_recalibration.py: what recomputing BatchNorm statistics before each evaluation costs an epoch.

    python benchmarks/bench_bn_recalibration.py                  # CPU
    python benchmarks/bench_bn_recalibration.py --device cuda

A trial recalibrates before every evaluation (``bn_recalibrate_batches`` forward passes, default 8, for the model and
again for its EMA). This times, in interleaved rounds against one training step of the same network in the same run,
the recalibration and prints its cost as a fraction of an epoch of the data set's real size: digits_cnn on digits
(16×16, batch 64, 23 steps an epoch) and ResNet-18 with the CIFAR stem and LSLU at its downsampling sites on
CIFAR-sized data (32×32, batch 128, 391 steps an epoch, as CIFAR-10's 50,000 images).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import device_name, interleaved_times, table  # noqa: E402
from trainables.insertion import apply_policy  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.recipe import recalibrate_bn  # noqa: E402

# name, model, its keywords, LSLU policy, input side, batch, steps per epoch of the real data set
CASES = (
    ("digits_cnn on digits", "digits_cnn", {}, "all", 16, 64, 23),
    ("ResNet-18 on CIFAR-10", "resnet18", {"cifar_stem": True}, "downsampling", 32, 128, 391),
)


def measure(device: torch.device, batches: int, rounds: int) -> list[dict]:
    rows = []
    for label, name, kwargs, policy, side, batch, steps in CASES:
        in_chans = 1 if name == "digits_cnn" else 3
        model = build_model(name, num_classes=10, in_chans=in_chans, **kwargs)
        apply_policy(model, policy, "lslu", n=3)
        model.to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(batch, in_chans, side, side, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        data = [(x, y)] * batches

        def train_step():
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def recalibrate():
            recalibrate_bn(model, itertools.islice(data, batches))

        times = interleaved_times({"step": train_step, "recalibrate": recalibrate}, device, rounds=rounds, runs=2)
        (step, step_iqr), (recal, recal_iqr) = times["step"], times["recalibrate"]
        rows.append(
            {
                "network": label,
                "policy": policy,
                "batch": batch,
                "train step ms": f"{step:.1f} ± {step_iqr:.1f}",
                f"recalibration ({batches} batches) ms": f"{recal:.1f} ± {recal_iqr:.1f}",
                "of an epoch (model)": f"{100 * recal / (steps * step):.2f} %",
                "of an epoch (model + EMA)": f"{200 * recal / (steps * step):.2f} %",
            }
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=8, help="bn_recalibrate_batches")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"BatchNorm recalibration cost, {device_name(device)}")
    rows = measure(device, args.batches, args.rounds)
    print(table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
