"""Which route runs an LSLU site: the only code that reads ``LSLU_KERNEL`` and the only one that chooses (DESIGN.md §2).

``LSLU_KERNEL``, read on every call so that a test or a worker can switch it (``eager_kernels()`` overrides it inside a
block, for this thread or task only):

    triton  (default) CUDA: the series' Triton pair; CPU: the compiled kernel for the series and the depthwise conv
    site    as triton, and on CUDA the series and the depthwise conv as one Triton site, with BatchNorm inside its
            function in training (opt-in until a GPU run weighs it)
    eager   none of the compiled or Triton kernels: PyTorch's ops alone (the closed form and the CPU's one-function
            site still serve: they are PyTorch ops)

The decision table: the site (``lslu_site``, which ``LSLU.forward`` calls) takes the first of rows 1–5 that applies;
row 5 runs the series by rows S1–S4 (``series``, also ``LSLU.series``) and the conv by D1–D2 (``depthwise_conv``).

 #  | device, tensor             | dtype   | mode                        | base | route
----+----------------------------+---------+-----------------------------+------+---------------------------------------
 1  | CPU, host, dense, ≥ 8 ch   | float32 | no grad; kernel on (c)      | any  | compiled kernel: series + conv (a)
 2  | CPU, host, 4-D             | any     | BN step, |γ| ≥ GAMMA_FLOOR, | relu | one-function site (cpu_site):
    |                            |         | no CPU autocast             |      | closed form + the CPU pair (b)
 3  | CUDA, dense, Triton        | any     | BN step; LSLU_KERNEL=site   | any  | Triton site + BatchNorm inside
 4  | CUDA, dense, Triton        | any     | otherwise; LSLU_KERNEL=site | any  | Triton site: series + conv
 5  | anything else              |         |                             |      | series (S) then the conv (D)
 S1 | CPU, host, 4-D             | any     | any                         | relu | closed form (ReluSeries if grad)
 S2 | CUDA, Triton               | any     | grad; LSLU_KERNEL≠eager     | any  | SeriesFunction (x saved) over the
    |                            |         |                             |      | Triton pair (dense) or reference's
 S3 | CUDA, dense, Triton        | any     | no grad; LSLU_KERNEL≠eager  | any  | Triton series forward kernel
 S4 | anything else              |         |                             |      | reference.series_forward
 D1 | CPU, kernel ≥ 5×5, no bias | any     | grad                        | any  | autograd Function, the CPU pair (b)
 D2 | anything else              |         |                             |      | F.conv2d

"host": a plain tensor outside ``torch.jit`` traces, ``torch.compile`` and ``torch.export`` (``on_host``). "dense": 4-D,
NCHW or channels_last. "no grad": no gradient wanted of x or the parameters (eval, deploy, ``torch.no_grad``).
"BN step": an unfused site in a training step of an affine BatchNorm2d that tracks running statistics
(``batch_norm_step_applies``). A θ_i of exactly 0 has no closed form: rows 2 and S1 step aside for it.
(a) In one pass; ReLU: the closed form computed inside the kernel; other bases: ``series`` before it. Rows 1, 4 and 5
    then run bn, unless the site is fused.
(b) The CPU pair (``_cpu_conv_route``, chosen at the autograd Function's forward): the compiled kernel's conv and
    gradients where it takes the conv's input (``cpu_kernel_takes``: float32, host, dense, ≥ 8 channels,
    LSLU_KERNEL≠eager, built), else ``F.conv2d`` and cpu_depthwise's backward (PyTorch's own for 3×3, two forward
    convolutions from 5×5).
(c) "kernel on": ``LSLU_KERNEL`` not ``eager`` and the kernel built (``cpu_kernel.library()``).
VanillaNet's activation (``activation_conv``): row 1 with f(x) for the series, else f(x) then ``depthwise_conv``.

Everything else in this package decides nothing: dispatch passes the chosen functions into the backends' autograd
Functions. An unmeasured route stays opt-in (row 3, 4). Why each route exists, with figures: benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations.lslu import closed_form, cpu_depthwise, cpu_kernel, cpu_site, reference

KERNELS = ("triton", "site", "eager")
GAMMA_FLOOR = 1e-2  # below it, the one-function site's (out − β) / γ loses too many digits of the conv's output
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("lslu_kernel", default=None)


def kernel_choice() -> str:
    forced = _FORCED.get()
    if forced is not None:
        return forced
    choice = os.environ.get("LSLU_KERNEL", "triton")
    if choice not in KERNELS:
        raise ValueError(f"environment variable LSLU_KERNEL={choice!r} is not one of {', '.join(KERNELS)}")
    return choice


@contextlib.contextmanager
def eager_kernels():
    """PyTorch's ops alone inside the block, whatever ``LSLU_KERNEL`` says (this thread or task only): for
    ``FlopCounterMode``, which sees aten's convolutions but not a compiled or Triton kernel's."""
    token = _FORCED.set("eager")
    try:
        yield
    finally:
        _FORCED.reset(token)


# --- what each route needs (the predicates) ---------------------------------------------------------------------


def on_host(x: torch.Tensor) -> bool:
    """Whether work on the host may serve x: a plain tensor, outside ``torch.jit`` traces, ``torch.compile`` and
    ``torch.export``. The closed form reads θ, ω and the CPU kernel reads addresses, which the fake tensors of an
    export do not have and a trace or graph would freeze in: there the plain series' ops serve."""
    return type(x) is torch.Tensor and not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def gradient_wanted(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether autograd records this call: grad mode on and x or a parameter requiring a gradient."""
    return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in params))


def cpu_kernel_takes(x: torch.Tensor) -> bool:
    """Whether the compiled kernel can compute a depthwise conv of x (no gradient of its own: inference, or inside an
    autograd Function): x ``on_host``, a 4-D float32 CPU tensor in NCHW or channels_last with at least V channels
    (with fewer, most of each block's lanes would be idle), ``LSLU_KERNEL`` not ``eager``, the kernel built."""
    if not on_host(x):
        return False
    if not x.is_cpu or x.dtype is not torch.float32 or x.dim() != 4 or x.shape[1] < cpu_kernel.V:
        return False
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return False
    return kernel_choice() != "eager" and cpu_kernel.library() is not None


def cpu_kernel_applies(x: torch.Tensor, *params: torch.Tensor) -> bool:
    """Row 1: the compiled kernel serves this site's call: no gradient wanted of x or ``params`` (the kernel has no
    autograd node) and ``cpu_kernel_takes(x)``. Cheap checks first: at batch 1 this runs once a site per forward."""
    return not gradient_wanted(x, *params) and cpu_kernel_takes(x)


def closed_form_applies(base: str, x: torch.Tensor) -> bool:
    """Row S1: the closed form serves this series (but for θ_i = 0, which ``ClosedForm.of`` tells): a ReLU base and
    a 4-D CPU tensor, ``on_host``."""
    return base == "relu" and x.device.type == "cpu" and x.dim() == 4 and on_host(x)


def batch_norm_step_applies(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether a site function can take over ``bn`` for this step: a training step of an affine BatchNorm2d that
    tracks running statistics (rows 2 and 3)."""
    return (
        torch.is_grad_enabled()
        and isinstance(bn, nn.BatchNorm2d)
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
    )  # BatchNorm's own error for one value per channel


def cpu_site_applies(base: str, x: torch.Tensor, bn: nn.Module) -> bool:
    """Row 2: the one-function site can run this training step (but for θ_i = 0, which ``ClosedForm.of`` tells), and
    only while every |γ| ≥ ``GAMMA_FLOOR``, as dividing by γ is how the conv's output comes back."""
    return (
        closed_form_applies(base, x)
        and not torch.is_autocast_enabled("cpu")
        and batch_norm_step_applies(x, bn)
        and bool(bn.weight.detach().abs().min() >= GAMMA_FLOOR)
    )


@functools.lru_cache(maxsize=1)
def _triton():
    try:
        from trainables.activations.lslu import triton_series
    except ImportError:  # no Triton (CPU-only installs): the reference pair serves
        return None
    return triton_series


def triton_applies(x: torch.Tensor) -> bool:
    """Rows S2, S3: a CUDA tensor, Triton importable, and not turned off by ``LSLU_KERNEL=eager``."""
    return x.is_cuda and kernel_choice() != "eager" and _triton() is not None


def triton_site_kernels(x: torch.Tensor):
    """Rows 3, 4: the Triton site's module (triton_site.py) when it serves x: ``LSLU_KERNEL=site``, a CUDA tensor in
    NCHW or channels_last layout, Triton importable; else None."""
    if not (
        x.is_cuda
        and x.dim() == 4
        and kernel_choice() == "site"
        and _triton() is not None
        and _triton().layout(x) is not None
    ):
        return None
    from trainables.activations.lslu import triton_site

    return triton_site


# --- the routes ----------------------------------------------------------------------------------------------


def _series_pair(x: torch.Tensor, base: str, channel: bool):
    """(forward, backward) of the series for x: the Triton pair for a 4-D CUDA tensor in NCHW or channels_last
    layout (``LSLU_KERNEL=eager`` turns it off), reference's otherwise."""
    if triton_applies(x) and x.dim() == 4 and _triton().layout(x) is not None:
        kernels = _triton()
        return (
            functools.partial(kernels.series_forward, base=base, channel=channel),
            functools.partial(kernels.series_backward, base=base, channel=channel),
        )
    return (
        functools.partial(reference.series_forward, base=base, channel=channel),
        functools.partial(reference.series_backward, base=base, channel=channel),
    )


def series(
    x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, base: str, channel: bool, memo: dict | None = None
) -> torch.Tensor:
    """f(y_n) by rows S1–S4; ``memo`` is the closed form's per-module cache (closed_form.closed_form). Where nothing
    else serves, autograd on the plain series: on the CPU it is faster than recomputing it in backward (benchmarks/)."""
    if closed_form_applies(base, x):
        out = closed_form.relu_series(x, theta, omega, memo)
        if out is not None:
            return out
    needs_grad = gradient_wanted(x, theta, omega)
    if needs_grad and triton_applies(x):
        return _triton().SeriesFunction.apply(x, theta, omega, *_series_pair(x, base, channel))
    if needs_grad:
        return reference.series_forward(x, theta, omega, base, channel)
    forward, _ = _series_pair(x, base, channel)
    return forward(x, theta, omega)


def _cpu_conv_route(x: torch.Tensor, weight: torch.Tensor, padding: int) -> tuple:
    """(conv, grads) for a depthwise conv of x inside an autograd Function, chosen at its forward: the compiled
    kernel's where it takes x (and the padding is the kernel's own, K // 2), PyTorch's (cpu_depthwise.py) else."""
    if 2 * padding + 1 == weight.shape[-1] and cpu_kernel_takes(x):
        return cpu_kernel.conv, cpu_kernel.grads
    return cpu_depthwise.conv, cpu_depthwise.grads


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` by rows D1, D2."""
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and bias is None and training and weight.shape[-1] >= cpu_depthwise.TWO_CONV_KERNEL:
        return cpu_depthwise.with_cpu_backward(x, weight, padding, *_cpu_conv_route(x, weight, padding))
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


def depthwise_grads(x, weight, grad, padding: int, need_input: bool = True, need_weight: bool = True, form=None):
    """dx and dweight of ``F.conv2d(s, weight, padding=padding, groups=C)`` on the CPU with s = x, or with ``form``
    (closed_form.ClosedForm) s = ``form.forward(x)``; dx is the gradient of s. By row D1's pair."""
    return _cpu_conv_route(x, weight, padding)[1](x, weight, grad, padding, need_input, need_weight, form)


def lslu_site(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """bn(depthwise_conv(f(y_n))) of an LSLU module ``act`` (its θ, ω, weight, bias, bn, base, granularity, n and
    memos; ``act.series`` for its series) by the first of rows 1–5 that applies."""
    fused, theta, omega, weight = act.fused, act.theta, act.omega, act.weight
    if cpu_kernel_applies(x, theta, omega, weight):  # row 1: CPU inference, series and conv in one pass
        form = closed_form.closed_form(theta, omega, act._series_memo) if act.base == "relu" else None
        y = cpu_kernel.series_conv(x if form is not None else act.series(x), weight, act.bias, form, act._cpu_memo)
        return y if fused else act.bn(y)
    if not fused and cpu_site_applies(act.base, x, act.bn):  # row 2
        form = closed_form.closed_form(theta, omega, act._series_memo)
        if form is not None:  # the whole site in one function that keeps only x
            conv, grads = _cpu_conv_route(x, weight, weight.shape[-1] // 2)
            return cpu_site.site(x, theta, omega, weight, act.bn, form, conv, grads)
    channel = act.granularity == "channel"
    site = triton_site_kernels(x)
    if site is not None and not fused and batch_norm_step_applies(x, act.bn):  # row 3: ... and BatchNorm: x alone kept
        return site.series_conv_batch_norm(x, theta, omega, weight, act.bn, act.base, channel)
    if site is not None:  # row 4: f(y_n) recomputed where the conv reads it, never written
        y = site.series_conv(x, theta, omega, weight, act.bias, act.base, channel)
    else:  # row 5
        y = depthwise_conv(act.series(x), weight, act.bias, act.n)
    return y if fused else act.bn(y)


def activation_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, base: str, memo: dict
) -> torch.Tensor:
    """``F.conv2d(f(x), weight, bias, padding=K // 2, groups=C)`` for a base activation f: VanillaNet's series
    activation before its BatchNorm (trainables/models/vanillanet.py). Row 1 (f(x) inside the kernel for ReLU, as
    the closed form of the series n = 1, θ = 1, ω = 0) when it applies, else f(x) then ``depthwise_conv``. ``memo``
    (a dict the caller owns) keeps the kernel's operands while the weights are unchanged."""
    if cpu_kernel_applies(x, weight):
        relu = base == "relu"
        return cpu_kernel.series_conv(
            x if relu else reference.BASES[base](x), weight, bias, closed_form.RELU if relu else None, memo
        )
    return depthwise_conv(reference.BASES[base](x), weight, bias, weight.shape[-1] // 2)
