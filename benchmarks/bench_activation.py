"""bench_activation.py: what one LSLU site costs against a ReLU site, forward + backward.

    python benchmarks/bench_activation.py                      # CPU, and CUDA when present
    python benchmarks/bench_activation.py --device cuda --shape 128 64 32 32
    python benchmarks/bench_activation.py --n 3 --parts              # also each part of the site alone

Evidence it gives: per variant, the median fwd+bwd time (ms, ± half the interquartile range), its ratio to the
ReLU site measured in the same run, the activation memory autograd keeps for backward (MB, counted exactly with
saved-tensor hooks) and its ratio to ReLU's, and on CUDA the peak allocated memory of the step. A ReLU site is
ReLU; an LSLU site is the series, the (2n+1)² depthwise conv and BatchNorm (DESIGN.md §2). ``naive`` is plain
autograd on all three (n+1 saved intermediates, one kernel per operation, PyTorch's depthwise backward);
``shipped`` is the LSLU module: on CUDA the series as two Triton kernels that keep only x
(trainables/activations/lslu/triton_series.py); on the CPU with a ReLU base the whole site as one function that keeps x
and its output (lslu/cpu_site.py: the series in closed form, lslu/closed_form.py; the depthwise conv and both its
gradients by the compiled kernel with f(y_n) computed inside it, lslu/cpu_kernel.py; the conv's output rebuilt from the
site's output for BatchNorm's backward). Which route runs where: lslu/dispatch.py.
On the CPU, ``ops only`` is the module with ``LSLU_KERNEL=eager``: without the compiled kernel for the series and
the depthwise conv (lslu/cpu_kernel.py), whose share of ``shipped`` it shows.
On CUDA, ``triton site`` is the module with ``LSLU_KERNEL=site``: the series recomputed inside a Triton depthwise
conv, f(y_n) never written, and BatchNorm in the same function, which keeps x alone and runs the conv again in backward
(lslu/triton_site.py; opt-in until this comparison is made on a GPU).
``--parts`` adds each part of the site as the module runs it, alone on an input of the site's shape (the series, the
depthwise conv, BatchNorm): where a site's time goes, and what fusing the parts could save.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import device_name, interleaved_times, peak_cuda_mb, saved_bytes, table  # noqa: E402
from trainables.activations import create_act  # noqa: E402
from trainables.activations.lslu import reference  # noqa: E402
from trainables.activations.lslu.dispatch import depthwise_conv  # noqa: E402


class NaiveLSLU(nn.Module):
    """The LSLU site with everything left to autograd: the baseline the shipped module improves on."""

    def __init__(self, lslu: nn.Module):
        super().__init__()
        self.lslu = lslu

    def forward(self, x):
        m = self.lslu
        return reference.site(x, m.theta, m.omega, m.weight, None, m.bn, m.base, m.granularity == "channel")


class SitePart(nn.Module):
    """One part of the LSLU module's site alone, run as the module runs it: ``series``, ``conv`` or ``bn``."""

    def __init__(self, lslu: nn.Module, part: str):
        super().__init__()
        self.lslu, self.part = lslu, part

    def forward(self, x):
        m = self.lslu
        if self.part == "series":
            return m.series(x)
        if self.part == "conv":
            return depthwise_conv(x, m.weight, None, m.n)
        return m.bn(x)


class WithKernel(nn.Module):
    """The LSLU module run with ``LSLU_KERNEL`` set to ``kernel`` (``site``: the Triton site, lslu/triton_site.py;
    ``eager``: PyTorch's ops alone), in its forward and, through ``kernel_env``, in the step's backward."""

    def __init__(self, lslu: nn.Module, kernel: str):
        super().__init__()
        self.lslu, self.kernel = lslu, kernel

    def forward(self, x):
        with kernel_env(self):
            return self.lslu(x)


def kernel_env(module: nn.Module):
    if isinstance(module, WithKernel):
        return mock.patch.dict(os.environ, LSLU_KERNEL=module.kernel)
    return contextlib.nullcontext()


def variants(channels: int, base: str, ns: list[int], parts: bool = False, cuda: bool = False):
    yield "relu", nn.ReLU()
    for n in ns:
        lslu = create_act("lslu", channels=channels, n=n, base=base)
        yield f"lslu n={n} naive", NaiveLSLU(lslu)
        yield f"lslu n={n} shipped", lslu
        if cuda:
            yield f"lslu n={n} triton site", WithKernel(lslu, "site")
        else:
            yield f"lslu n={n} ops only", WithKernel(lslu, "eager")
        if parts:
            yield f"  n={n} series alone", SitePart(lslu, "series")
            yield f"  n={n} {2 * n + 1}x{2 * n + 1} conv alone", SitePart(lslu, "conv")
    if parts:
        yield "  batchnorm alone", SitePart(lslu, "bn")


def measure(
    device: torch.device,
    shape: list[int],
    base: str,
    ns: list[int],
    channels_last: bool,
    dtype: torch.dtype,
    rounds: int,
    parts: bool = False,
):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    g = torch.randn_like(x)
    steps, extra = {}, {}
    for name, module in variants(shape[1], base, ns, parts, device.type == "cuda"):
        module = module.to(device=device, dtype=dtype, memory_format=fmt).train()

        def step(module=module):
            with kernel_env(module):
                module(x).backward(g)

        with saved_bytes() as saved:
            out = module(x)
        del out
        steps[name] = step
        extra[name] = {"saved_mb": saved["bytes"] / 2**20, "peak_mb": peak_cuda_mb(step, device)}
    times = interleaved_times(steps, device, rounds=rounds)
    rows = []
    for name in steps:
        row = {"variant": name, "ms": times[name][0], "±": times[name][1], **extra[name]}
        relu = rows[0] if rows else row
        row["time_x_relu"] = row["ms"] / relu["ms"]
        row["saved_x_relu"] = row["saved_mb"] / relu["saved_mb"]
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--shape", type=int, nargs=4, default=[32, 64, 32, 32], metavar=("N", "C", "H", "W"))
    p.add_argument("--base", default="relu", choices=["relu", "silu", "gelu"])
    p.add_argument("--n", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (4 runs of each variant per round)")
    p.add_argument("--parts", action="store_true", help="also time the series, the depthwise conv and BatchNorm alone")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda: not available here")
            continue
        device = torch.device(dev)
        settings = [(False, torch.float32), (True, torch.float32)] + ([(True, torch.bfloat16)] if dev == "cuda" else [])
        for channels_last, dtype in settings:
            rows = measure(device, args.shape, args.base, args.n, channels_last, dtype, args.rounds, args.parts)
            print(
                f"\n{device_name(device)} | shape {tuple(args.shape)} | base {args.base} | "
                f"{'channels_last' if channels_last else 'NCHW'} | {str(dtype).replace('torch.', '')}"
            )
            print(table(rows, ["variant", "ms", "±", "time_x_relu", "saved_mb", "saved_x_relu", "peak_mb"]))


if __name__ == "__main__":
    main()
