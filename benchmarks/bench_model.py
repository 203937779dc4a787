"""bench_model.py: what inserting LSLU costs a whole network, per insertion policy.

    python benchmarks/bench_model.py                           # CPU, and CUDA when present
    python benchmarks/bench_model.py --device cuda --batch 128

Evidence it gives, for ResNet-18 (CIFAR stem, 32×32) and VanillaNet-5 (CIFAR stem, a quarter width on CPU) with LSLU
(n=3) at no site, the downsampling sites, and every site: the median time of one training step (forward, backward,
SGD update) and its ratio to the same network without LSLU measured in the same run; the batch-1 eval latency of
the deploy form (BatchNorm folded, ``fuse_model``) and its ratio; the activation memory autograd keeps for backward
and, on CUDA, the peak memory of a training step, each with its ratio. Targets (issue 9): training step ≤ 1.05×
at the downsampling sites and ≤ 1.25× at all sites, fused latency ≤ 1.05×, peak training memory ≤ 1.10×.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import device_name, median_time, peak_cuda_mb, saved_bytes, table  # noqa: E402
from trainables.insertion import apply_policy  # noqa: E402
from trainables.models import build_model  # noqa: E402
from trainables.models.stats import fuse_model  # noqa: E402

POLICIES = ("none", "downsampling", "all")


def network(name: str, policy: str, width: float):
    kwargs = {"width": width} if name.startswith("vanillanet") else {}
    model = build_model(name, num_classes=10, cifar_stem=True, **kwargs)
    if policy != "none":
        apply_policy(model, policy, "lslu", n=3)
    return model


def measure(name: str, device: torch.device, batch: int, size: int, channels_last: bool, amp: bool, width: float, runs: int):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    x1 = x[:1].clone()
    rows, base = [], None
    for policy in POLICIES:
        torch.manual_seed(0)
        model = network(name, policy, width).to(device, memory_format=fmt).train()
        if hasattr(model, "set_act_learn"):
            model.set_act_learn(1.0)  # VanillaNet after deep training, as it is deployed
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        train_ms, spread = median_time(step, device, runs=runs)
        peak = peak_cuda_mb(step, device)
        with saved_bytes() as saved, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            F.cross_entropy(model(x), y)
        deploy = fuse_model(model).to(memory_format=fmt)
        with torch.inference_mode():
            latency, _ = median_time(lambda: deploy(x1), device, runs=max(runs, 30))
        row = {"model": name, "policy": policy, "train_ms": train_ms, "±": spread, "latency_ms": latency,
               "saved_mb": saved["bytes"] / 2**20, "peak_mb": peak}
        base = base or row
        row["train_x"] = train_ms / base["train_ms"]
        row["latency_x"] = latency / base["latency_ms"]
        row["saved_x"] = row["saved_mb"] / base["saved_mb"]
        row["peak_x"] = peak / base["peak_mb"] if peak else None
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["resnet18", "vanillanet_5"])
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    for dev in (["cpu", "cuda"] if args.device == "all" else [args.device]):
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available here")
            continue
        device = torch.device(dev)
        settings = [(False, False), (True, False)] if dev == "cpu" else [(True, True), (True, False)]
        for channels_last, amp in settings:
            rows = []
            for name in args.models:
                width = 0.25 if dev == "cpu" else 1.0
                rows += measure(name, device, args.batch, args.size, channels_last, amp, width, args.runs)
            print(f"\n{device_name(device)} | batch {args.batch} at {args.size}² | {'channels_last' if channels_last else 'NCHW'}"
                  f" | {'bf16 autocast' if amp else 'float32'} | VanillaNet width {0.25 if dev == 'cpu' else 1.0}")
            print(table(rows, ["model", "policy", "train_ms", "±", "train_x", "latency_ms", "latency_x", "saved_mb", "saved_x",
                               "peak_mb", "peak_x"]))


if __name__ == "__main__":
    main()
