"""LSLU's series with a ReLU base in closed form: one clamp of one affine map of x.

Each step maps a clamped affine function of x to another one: if f(y_{i-1}) = clamp(a x + b, l, h), then

    θ_i clamp(a x + b, l, h) + ω_i = clamp(θ_i a x + θ_i b + ω_i, θ_i l + ω_i, θ_i h + ω_i)   (bounds swap when θ_i < 0)
    relu(clamp(v, L, H)) = clamp(v, relu(L), relu(H))

so, from relu(x) = clamp(x, 0, +inf), the whole series is f(y_n) = clamp(A x + B, lo, hi), where A, B, lo, hi depend
on θ, ω alone: n steps on values of θ_i's shape ((), or (C,) per channel), done in float64 on the host. That is one
pass over x instead of 3n + 1 (forward) and a few instead of about 5n (backward), and backward keeps only x, like a
ReLU site (autograd on the plain series keeps n + 1 tensors). Where it serves is dispatch.py's to say; the host work
(θ, ω read as numbers) is why it never runs under a trace, ``torch.compile`` or ``torch.export``.

Gradients are the series' own: an element strictly between the bounds was never clipped on its way through the
series (A x + B is strictly monotone in x when no θ_i is 0), so its output is A x + B; a clipped element's output is
a bound, whose derivative in θ, ω runs back through the same steps (``_bounds_backward``). Elements on a bound count
as clipped, as relu'(0) = 0 has it. A θ_i of exactly 0 makes the output constant while the series' dθ_i still depends
on x, so that case keeps the plain series (``ClosedForm.of`` says None).
"""

from __future__ import annotations

import numpy as np
import torch


def _bounds(theta: np.ndarray, omega: np.ndarray):
    """A, B, lo, hi, hi_finite of f(y_n) = clamp(A x + B, lo, hi), and each step's values for ``_bounds_backward``.

    An infinite upper bound is held as hi = 0 with hi_finite False; the lower bound is finite after every relu."""
    a, b, lo, hi = (np.full(theta.shape[1:], v) for v in (1.0, 0.0, 0.0, 0.0))
    hi_finite = np.zeros(theta.shape[1:], dtype=bool)
    steps = []
    for t, w in zip(theta, omega):
        positive = t > 0
        low_edge = np.where(positive, t * lo + w, t * hi + w)  # θ < 0 maps the upper bound to the lower one
        high_edge = np.where(positive, t * hi + w, t * lo + w)
        low_finite, hi_finite = positive | hi_finite, hi_finite | ~positive
        steps.append((t, a, b, lo, hi, positive, low_edge, high_edge, low_finite, hi_finite))
        a, b = t * a, t * b + w
        lo = np.where(low_finite, np.maximum(low_edge, 0.0), 0.0)
        hi = np.where(hi_finite, np.maximum(high_edge, 0.0), 0.0)
    return a, b, lo, hi, hi_finite, steps


def _bounds_backward(steps, d_a, d_b, d_lo, d_hi):
    """dθ, dω from the gradients of A, B, lo, hi: the steps of ``_bounds`` in reverse (relu'(0) = 0, as torch has
    it)."""
    d_theta, d_omega = [], []
    for t, a, b, lo, hi, positive, low_edge, high_edge, low_finite, hi_finite in reversed(steps):
        g_low = np.where(low_finite & (low_edge > 0), d_lo, 0.0)
        g_high = np.where(hi_finite & (high_edge > 0), d_hi, 0.0)
        d_theta.append(d_a * a + d_b * b + g_low * np.where(positive, lo, hi) + g_high * np.where(positive, hi, lo))
        d_omega.append(d_b + g_low + g_high)
        d_a, d_b = d_a * t, d_b * t
        d_lo, d_hi = t * np.where(positive, g_low, g_high), t * np.where(positive, g_high, g_low)
    return np.stack(d_theta[::-1]), np.stack(d_omega[::-1])


def _on(x: torch.Tensor, value: np.ndarray) -> torch.Tensor:
    """A coefficient as a tensor that broadcasts against x: 0-d (layer) or (1, C, 1, 1) (channel)."""
    t = torch.from_numpy(np.ascontiguousarray(value)).to(x.dtype)
    return t.view(1, -1, 1, 1) if t.dim() else t


def _host(p: torch.Tensor) -> np.ndarray:
    return p.detach().to("cpu", torch.float64).numpy()


def _sum(t: torch.Tensor, channel: bool) -> np.ndarray:
    """Σ over N, H, W per channel, or over everything; accumulated in at least float32, returned in float64."""
    dims = (0, 2, 3) if channel else tuple(range(t.dim()))
    return _host(t.sum(dims, dtype=torch.promote_types(t.dtype, torch.float32)))


class ClosedForm:
    """The series for one value of θ, ω: ``forward(x)`` = f(y_n); ``backward(x, grad)`` = dx, dθ, dω."""

    def __init__(self, theta: np.ndarray, omega: np.ndarray, param: tuple[torch.dtype, torch.Size]):
        self.a, self.b, self.lo, self.hi, self.hi_finite, self._steps = _bounds(theta, omega)
        self.param = param  # θ's dtype and shape, which dθ and dω take
        self.channel = self.a.ndim > 0
        self.bounded_above = bool(self.hi_finite.any())
        self._tensors: tuple | None = None

    @staticmethod
    def of(theta: torch.Tensor, omega: torch.Tensor) -> "ClosedForm | None":
        """None when a θ_i is exactly 0 (the caller keeps the plain series)."""
        theta_host = _host(theta)
        return None if (theta_host == 0).any() else ClosedForm(theta_host, _host(omega), (theta.dtype, theta.shape))

    def _coefs(self, x: torch.Tensor) -> tuple:
        """A, B, lo and hi (None when unbounded) as tensors in x's dtype, made once per dtype."""
        if self._tensors is None or self._tensors[0].dtype != x.dtype:
            hi = _on(x, np.where(self.hi_finite, self.hi, np.inf)) if self.bounded_above else None
            self._tensors = (_on(x, self.a), _on(x, self.b), _on(x, self.lo), hi)
        return self._tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, lo, hi = self._coefs(x)
        return torch.addcmul(b, x, a).clamp_(min=lo, max=hi)

    def backward(self, x: torch.Tensor, grad: torch.Tensor, need_input: bool = True):
        b, lo, hi, channel = self.b, self.lo, self.hi, self.channel
        a_t = self._coefs(x)[0]
        # grad where lo < A x + B < hi, by relu's own backward on A x + B − lo and on hi − (A x + B)
        above = torch.ops.aten.threshold_backward(grad, torch.addcmul(_on(x, b - lo), x, a_t), 0)
        s_above = _sum(above, channel)
        d_lo = _sum(grad, channel) - s_above
        g_mid = above
        if self.bounded_above:
            below = torch.addcmul(_on(x, np.where(self.hi_finite, hi - b, np.inf)), x, -a_t)
            g_mid = torch.ops.aten.threshold_backward(above, below, 0)
        d_b = _sum(g_mid, channel)
        d_hi = s_above - d_b if self.bounded_above else np.zeros_like(hi)
        d_a = _sum(g_mid * x, channel)
        d_theta, d_omega = _bounds_backward(self._steps, d_a, d_b, d_lo, d_hi)
        dtype, shape = self.param
        dx = g_mid.mul_(a_t) if need_input else None
        return dx, torch.from_numpy(d_theta).to(dtype).view(shape), torch.from_numpy(d_omega).to(dtype).view(shape)


class ReluSeries(torch.autograd.Function):
    """f(y_n) of the ReLU series via its closed form; saves only x."""

    @staticmethod
    def forward(ctx, x, theta, omega, form: ClosedForm):
        ctx.save_for_backward(x)
        ctx.form = form
        return form.forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return *ctx.form.backward(x, grad, ctx.needs_input_grad[0]), None


def version(t: torch.Tensor) -> int | None:
    """t's in-place version for a memo's key; None for a tensor made under ``torch.inference_mode`` (a module built or
    fused there), which keeps no version counter: its in-place changes, only possible in inference mode, go unseen."""
    return None if t.is_inference() else t._version


def relu_series(
    x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, memo: dict | None = None
) -> torch.Tensor | None:
    """f(y_n) of the ReLU series for θ, ω of shape (n,) (layer) or (n, C) (channel) and x of shape (N, C, H, W),
    through ``ReluSeries`` (x saved) when a gradient is wanted; None when a θ_i is exactly 0 (the caller keeps the
    plain series). ``memo`` (a dict the caller owns, e.g. per module) keeps the last ``ClosedForm`` while θ and ω
    are unchanged (eval, deploy)."""
    form = closed_form(theta, omega, memo)
    if form is None:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or theta.requires_grad or omega.requires_grad):
        return ReluSeries.apply(x, theta, omega, form)
    return form.forward(x)


def closed_form(theta: torch.Tensor, omega: torch.Tensor, memo: dict | None = None) -> ClosedForm | None:
    """``ClosedForm.of(θ, ω)``, kept in ``memo`` until θ or ω changes (in place or replaced)."""
    if memo is None:
        return ClosedForm.of(theta, omega)
    key = (theta.data_ptr(), version(theta), omega.data_ptr(), version(omega), theta.dtype)
    if memo.get("key") != key:
        memo.update(key=key, form=ClosedForm.of(theta, omega))
    return memo["form"]


# relu(x) itself, = clamp(x, 0, ∞): the series with n = 1, θ = 1, ω = 0 (VanillaNet's activation with a ReLU base)
RELU = ClosedForm(np.ones(1), np.zeros(1), (torch.float32, torch.Size([1])))
