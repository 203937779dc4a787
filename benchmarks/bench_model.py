"""bench_model.py: what inserting LSLU costs a whole network, per insertion policy.

    python benchmarks/bench_model.py                           # CPU, and CUDA when present
    python benchmarks/bench_model.py --device cuda --batch 128

Evidence it gives, for ResNet-18 (CIFAR stem, 32×32) and VanillaNet-5 (CIFAR stem, a quarter width on CPU) with LSLU
(n=3) at no site, the downsampling sites, and every site: the median time of one training step (forward, backward,
SGD update) and its ratio to the same network without LSLU measured in the same run; the batch-1 eval latency of
the deploy form (BatchNorm folded, ``fuse_model``) and its ratio, on CUDA also replayed from a CUDA graph
(``graph_ms``: the GPU's work without the host's launch cost per kernel, which is most of a batch-1 forward); the
activation memory autograd keeps for backward and, on CUDA, the peak memory of a training step, each with its ratio.
The policies are timed in interleaved rounds (median of all rounds, ± half the interquartile range), so the machine's
load falls on each alike. Targets (issue 9): training step ≤ 1.05× at the downsampling sites and ≤ 1.25× at all
sites, fused latency ≤ 1.05×, peak training memory ≤ 1.10×.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import cuda_graph_replay, device_name, interleaved_times, peak_cuda_mb, saved_bytes, table  # noqa: E402
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


def measure(
    name: str, device: torch.device, batch: int, size: int, channels_last: bool, amp: bool, width: float, rounds: int
):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    x1 = x[:1].clone()
    steps, infers, graphs, extra = {}, {}, {}, {}
    for policy in POLICIES:
        torch.manual_seed(0)
        model = network(name, policy, width).to(device, memory_format=fmt).train()
        if hasattr(model, "set_act_learn"):
            model.set_act_learn(1.0)  # VanillaNet after deep training, as it is deployed
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def step(model=model, opt=opt):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with saved_bytes() as saved, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            F.cross_entropy(model(x), y)
        deploy = fuse_model(model).to(memory_format=fmt)

        def infer(deploy=deploy):
            with torch.inference_mode():
                deploy(x1)

        steps[policy], infers[policy] = step, infer
        if device.type == "cuda":
            graphs[policy] = cuda_graph_replay(deploy, x1)
        extra[policy] = {"saved_mb": saved["bytes"] / 2**20, "peak_mb": peak_cuda_mb(step, device)}
    train = interleaved_times(steps, device, rounds=rounds)
    latency = interleaved_times(infers, device, rounds=rounds, runs=10)
    replay = interleaved_times(graphs, device, rounds=rounds, runs=10) if graphs else {}
    rows = []
    for policy in POLICIES:
        row = {
            "model": name,
            "policy": policy,
            "train_ms": train[policy][0],
            "±": train[policy][1],
            "latency_ms": latency[policy][0],
            "graph_ms": replay[policy][0] if replay else None,
            **extra[policy],
        }
        base = rows[0] if rows else row
        row["train_x"] = row["train_ms"] / base["train_ms"]
        row["latency_x"] = row["latency_ms"] / base["latency_ms"]
        row["graph_x"] = row["graph_ms"] / base["graph_ms"] if replay else None
        row["saved_x"] = row["saved_mb"] / base["saved_mb"]
        row["peak_x"] = row["peak_mb"] / base["peak_mb"] if row["peak_mb"] else None
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--models", nargs="+", default=["resnet18", "vanillanet_5"])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (4 steps of each policy per round)")
    args = p.parse_args(argv)
    for dev in ["cpu", "cuda"] if args.device == "all" else [args.device]:
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available here")
            continue
        device = torch.device(dev)
        settings = [(False, False), (True, False)] if dev == "cpu" else [(True, True), (True, False)]
        for channels_last, amp in settings:
            rows = []
            for name in args.models:
                width = 0.25 if dev == "cpu" else 1.0
                rows += measure(name, device, args.batch, args.size, channels_last, amp, width, args.rounds)
            print(
                f"\n{device_name(device)} | batch {args.batch} at {args.size}²"
                f" | {'channels_last' if channels_last else 'NCHW'}"
                f" | {'bf16 autocast' if amp else 'float32'} | VanillaNet width {0.25 if dev == 'cpu' else 1.0}"
            )
            graph = ["graph_ms", "graph_x"] if dev == "cuda" else []
            print(
                table(
                    rows,
                    [
                        "model",
                        "policy",
                        "train_ms",
                        "±",
                        "train_x",
                        "latency_ms",
                        "latency_x",
                        *graph,
                        "saved_mb",
                        "saved_x",
                        "peak_mb",
                        "peak_x",
                    ],
                )
            )


if __name__ == "__main__":
    main()
