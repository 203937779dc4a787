"""Shared measuring tools for the benchmarks: timing with warm-up and medians, the bytes autograd saves,
GPU busy time."""

from __future__ import annotations

import platform
import statistics
import threading
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


def interleaved_times(
    fns: dict[str, object], device: torch.device, rounds: int = 5, runs: int = 4, warmup: int = 3
) -> dict[str, tuple[float, float]]:
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


def nvml():
    """NVML's Python binding: nvidia-ml-py where installed, else the copy Ray ships (Ray reads GPUs through it); None
    without either, or without an NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        try:
            from ray._private.thirdparty import pynvml
        except ImportError:
            return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVMLError's subclasses, or OSError where the library is missing
        return None
    return pynvml


class GpuBusy:
    """The GPUs' busy time while the block runs: every ``period`` s a thread reads NVML's utilization of each GPU (the
    share of its last sample period, 1/6 to 1 s, in which a kernel ran) and keeps the mean over the GPUs.
    ``busy_pct`` averages all samples (the whole block); ``active_pct`` only those from the first to the last sample
    in which a GPU was busy, which leaves out start-up before the first kernel and the end after the last.
    Both are None where NVML cannot be read (no NVIDIA GPU)."""

    def __init__(self, period: float = 0.1):
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "GpuBusy":
        lib = nvml()
        if lib is not None:
            handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())]
            if not handles:
                lib.nvmlShutdown()
                return self
            self._thread = threading.Thread(target=self._sample, args=(lib, handles), daemon=True)
            self._thread.start()
        return self

    def _sample(self, lib, handles) -> None:
        try:
            while not self._stop.wait(self.period):
                self.samples.append(statistics.fmean(lib.nvmlDeviceGetUtilizationRates(h).gpu for h in handles))
        finally:
            lib.nvmlShutdown()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy_pct(self) -> float | None:
        return busy_share(self.samples)[0]

    @property
    def active_pct(self) -> float | None:
        return busy_share(self.samples)[1]


def busy_share(samples: list[float]) -> tuple[float | None, float | None]:
    """(mean of all utilization samples, mean of those from the first to the last non-zero one);
    None without samples."""
    if not samples:
        return None, None
    busy = [i for i, s in enumerate(samples) if s > 0]
    active = samples[busy[0] : busy[-1] + 1] if busy else samples
    return statistics.fmean(samples), statistics.fmean(active)


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
