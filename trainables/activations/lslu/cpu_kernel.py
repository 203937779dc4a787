"""LSLU's depthwise site on the CPU as one compiled kernel: f(y_n) and the depthwise conv in one pass (cpu_kernel.cpp).

At batch 1 the deploy form's depthwise conv through ``F.conv2d`` (oneDNN) costs mostly per-call work whatever the map
size, and the series before it is one more pass over the tensor. The kernel reads x once, computes the series (the
ReLU closed form, closed_form.py; for other bases x is f(y_n) already and the series is the identity) into a padded
per-channel-block buffer and sums the taps there, threaded over images × channel blocks by OpenMP (figures:
benchmarks/README.md, "LSLU kernels: why each route exists").

Training uses it too: ``conv`` and ``grads`` are the forward conv; dx, which is the same conv with flipped taps of the
output's gradient; and dw (``weight_grad``, a second entry point), which recomputes f(y_n) from x per channel block,
so f(y_n) is written in neither direction.

It is built on first use with the system C++ compiler (``$CXX``, else ``c++``) for this machine's processor
(``-march=native``) into ``$LSLU_CACHE_DIR`` (default ``~/.cache/lslu-sweep``), under a name that hashes the source,
the compiler, the flags and the processor, so nodes of a cluster that share a home directory each get their own
build. Without a compiler the build fails once, with a warning, and ``library()`` is None.
It takes float32 CPU tensors in NCHW or channels_last, threads as ``torch.get_num_threads()``; which calls it serves
(at least 8 channels, the kernel switch, no trace or export, ...) is decided in dispatch.py, not here.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch

from trainables.activations.lslu.closed_form import ClosedForm, version
from trainables.activations.lslu.reference import memory_format_of

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
V = 8  # channels per block, as in the source


def cache_dir() -> Path:
    return Path(os.environ.get("LSLU_CACHE_DIR") or Path.home() / ".cache" / "lslu-sweep")


def _processor() -> str:
    """What -march=native compiles for: the CPU's flags where /proc/cpuinfo has them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


@functools.lru_cache(maxsize=1)
def library():
    """The built library (``lslu_site_forward``, ``lslu_site_weight_grad``), or None (after one warning) where it
    cannot be built."""
    compiler = os.environ.get("CXX") or shutil.which("c++")
    try:
        if not compiler:
            raise RuntimeError("no C++ compiler: neither $CXX nor c++ on PATH")
        compiler_id = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
        key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler_id, *FLAGS, _processor()]).encode())
        path = cache_dir() / f"lslu_cpu-{key.hexdigest()[:16]}.so"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # then renamed: a worker never loads half a file
            compiled = subprocess.run(
                [compiler, *FLAGS, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True, timeout=300
            )
            if compiled.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {compiled.stderr.strip()[-2000:]}")
            os.replace(tmp, path)
        built = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"LSLU's CPU kernel ({SOURCE.name}) could not be built, so PyTorch's ops serve: {err}", RuntimeWarning
        )
        return None
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    built.lslu_site_forward.argtypes = [pointer] * 3 + [i64] * 4  # x, out, table; N, H, W, flags
    built.lslu_site_weight_grad.argtypes = [pointer] * 4 + [i64] * 4  # x, g, dw, table; N, H, W, flags
    built.lslu_site_forward.restype = built.lslu_site_weight_grad.restype = ctypes.c_int
    return built


def _padded(values, channels: int) -> torch.Tensor:
    """(ceil(C / V) · V,) float32: values (a scalar or per channel) broadcast over C, then zeros up to the block."""
    out = np.zeros(-(-channels // V) * V, dtype=np.float32)
    out[:channels] = np.broadcast_to(np.asarray(values, dtype=np.float64), (channels,))
    return torch.from_numpy(out)


def _coefficients(form: ClosedForm | None, channels: int) -> tuple:
    """a, b, lo, hi of f(y_n) = clamp(a x + b, lo, hi), each (Cb · V,); the identity when ``form`` is None."""
    if form is None:  # x is f(y_n) already
        coefs = (1.0, 0.0, -np.inf, np.inf)
    else:
        coefs = (form.a, form.b, form.lo, np.where(form.hi_finite, form.hi, np.inf))
    return tuple(_padded(v, channels) for v in coefs)


def _table(tensors, channels: int, k: int):
    """What the kernel's ``table`` argument points to: the addresses of weight, a, b, lo, hi and bias, then C and K."""
    return (ctypes.c_int64 * 8)(*(0 if t is None else t.data_ptr() for t in tensors), channels, k)


class Operands:
    """The kernel's operands for one state of a module's weights: the weight as (Cb, K, K, V), then a, b, lo, hi and
    bias, each (Cb · V,), and their ``_table``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, form: ClosedForm | None):
        c, k = weight.shape[0], weight.shape[-1]
        cb = -(-c // V)
        blocked = torch.zeros(cb * V, k, k, dtype=torch.float32)
        blocked[:c] = weight.detach().reshape(c, k, k)
        blocked = blocked.view(cb, V, k, k).permute(0, 2, 3, 1).contiguous()
        self.tensors = (
            blocked,
            *_coefficients(form, c),
            _padded(np.zeros(c) if bias is None else bias.detach().to("cpu", torch.float64).numpy(), c),
        )
        self.table = _table(self.tensors, c, k)
        self.weight, self.bias, self.form = weight, bias, form  # held, so that the ids in the key stay theirs
        self.key = _key(weight, bias, form)

    def __reduce__(self):
        """Copied or pickled (with its module), it becomes None, to be remade: the table holds the original's
        addresses."""
        return _dropped, ()


def _dropped() -> None:
    return None


def _key(weight: torch.Tensor, bias: torch.Tensor | None, form: ClosedForm | None) -> tuple:
    """What the operands were made from: the tensors (and their storage, which ``param.data = …`` replaces), their
    in-place versions (closed_form.version), the series' form."""
    tensors = (weight,) if bias is None else (weight, bias)
    return *((id(t), t.data_ptr(), version(t)) for t in tensors), id(form)


def series_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, form: ClosedForm | None, memo: dict
) -> torch.Tensor:
    """``F.conv2d(f(y_n), weight, bias, padding=K // 2, groups=C)`` with f(y_n) = ``form.forward(x)``, or x itself when
    ``form`` is None; x float32, 4-D, NCHW or channels_last. ``memo`` (a dict the caller owns) keeps the
    ``Operands``, remade when weight, bias or the form change."""
    operands = memo.get("operands")
    if operands is None or operands.key != _key(weight, bias, form):
        operands = memo["operands"] = Operands(weight, bias, form)
    n, c, h, w = x.shape
    if c != weight.shape[0]:  # F.conv2d's own check, which the kernel would not make
        raise RuntimeError(
            f"LSLU's depthwise conv has {weight.shape[0]} channels, its input {c} (input shape {tuple(x.shape)})"
        )
    out = torch.empty_like(x)
    if out.numel() and library().lslu_site_forward(x.data_ptr(), out.data_ptr(), operands.table, n, h, w, _flags(x)):
        raise MemoryError(f"LSLU's CPU kernel could not allocate its buffer for a {h}×{w} map")
    return out


def _flags(x: torch.Tensor) -> int:
    """The kernel's flags: bit 0 channels_last (of a tensor the kernel takes), the bits above it the threads to use."""
    return (not x.is_contiguous()) | torch.get_num_threads() << 1


def weight_grad(x: torch.Tensor, grad: torch.Tensor, form: ClosedForm | None, k: int) -> torch.Tensor:
    """dweight, (C, 1, k, k), of ``F.conv2d(s, weight, padding=k // 2, groups=C)`` with s = ``form.forward(x)`` (x
    when ``form`` is None) for the output's gradient ``grad``; s is computed inside the kernel, never written. x as
    ``series_conv`` takes it; grad is brought to x's layout."""
    n, c, h, w = x.shape
    grad = grad.contiguous(memory_format=torch.contiguous_format if x.is_contiguous() else torch.channels_last)
    if not x.numel():
        return torch.zeros(c, 1, k, k)
    coefficients = _coefficients(form, c)
    dw = torch.empty(c, 1, k, k)
    if library().lslu_site_weight_grad(
        x.data_ptr(), grad.data_ptr(), dw.data_ptr(), _table((None, *coefficients, None), c, k), n, h, w, _flags(x)
    ):
        raise MemoryError(f"LSLU's CPU kernel could not allocate its buffers for a {h}×{w} map")
    return dw


def conv(x: torch.Tensor, weight: torch.Tensor, padding: int, form: ClosedForm | None = None) -> torch.Tensor:
    """``F.conv2d(s, weight, padding=padding, groups=C)`` with s = ``form.forward(x)``, or x when ``form`` is None,
    without a gradient (inside autograd Functions); ``padding`` is K // 2, which the kernel implies."""
    return series_conv(x, weight, None, form, {})


def grads(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad: torch.Tensor,
    padding: int,
    need_input: bool = True,
    need_weight: bool = True,
    form: ClosedForm | None = None,
) -> tuple:
    """(dx, dweight) of ``conv(x, weight, padding, form)`` for the output's gradient ``grad`` (dx is the gradient of s;
    None where not needed): dx the same kernel with flipped taps, dw ``weight_grad`` with s recomputed inside it."""
    grad = grad.contiguous(memory_format=memory_format_of(x))  # the kernel takes x and grad in one layout
    dx = conv(grad, weight.flip(-1, -2), padding) if need_input else None
    return dx, weight_grad(x, grad, form, weight.shape[-1]) if need_weight else None
