"""Shared measuring tools for the benchmarks: timing with warm-up and medians, and the bytes autograd saves."""
from __future__ import annotations

import platform
import statistics
import time
from contextlib import contextmanager

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, object], device: torch.device, rounds: int = 5, runs: int = 4, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """Median and interquartile half-range (ms) of each function, measured in interleaved rounds.

    One variant after another, round after round: a drift in the machine's load (other processes) falls on every
    variant alike instead of on whichever ran during it, and first-call costs land in the warm-up.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(runs):
                start = time.perf_counter()
                fn()
                sync(device)
                samples[name].append(1000 * (time.perf_counter() - start))
    out = {}
    for name, times in samples.items():
        q = statistics.quantiles(times, n=4)
        out[name] = (statistics.median(times), (q[2] - q[0]) / 2)
    return out


@contextmanager
def saved_bytes():
    """Counts the bytes of every tensor autograd saves for backward inside the block (activation memory)."""
    total = {"bytes": 0}
    seen: set[int] = set()

    def pack(t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key not in seen:  # parameters and views of one storage are counted once
            seen.add(key)
            total["bytes"] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def peak_cuda_mb(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def cuda_graph_replay(fn, x: torch.Tensor):
    """``fn(x)`` captured once in a CUDA graph (after a warm-up on a side stream, as PyTorch's docs do it). The returned
    ``replay(new_x=None)`` copies ``new_x`` into the captured input, replays the graph and returns the captured output:
    the GPU's work without the host's per-kernel launch cost, which dominates a batch-1 forward."""
    static = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            fn(static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        out = fn(static)

    def replay(new_x: torch.Tensor | None = None):
        if new_x is not None:
            static.copy_(new_x)
        graph.replay()
        return out

    return replay


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.rjust(widths[c]) for c in columns)]
    lines += ["  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)
