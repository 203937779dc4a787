"""The depthwise convolution's CPU backward by PyTorch's ops: for kernels of 5×5 and more, two forward convolutions.

PyTorch's CPU backward for depthwise convolutions with large kernels is slow (many times its forward). Both
gradients are themselves depthwise convolutions, which run at forward speed:

    dx = depthwise_conv(g, flip(w))                                   (same padding)
    dw[c] = Σ_n  conv(pad(x)[n, c], g[n, c])                          (one group per (n, c), summed over n)

The second one runs one group per image and channel, which costs more than its work on small maps: up to 8×8
(``DENSE_MAP`` positions), dw comes instead from one batched matrix product over the images, Σ_n g[n, c, p] x[n, c, q]
for every output position p and input position q, whose (p, q) pairs are then summed into the kernel tap q − p they
share (``_tap_matrix``). For 3×3 kernels PyTorch's own backward is the faster one, in both layouts, so ``grads``
keeps it. These choices by kernel and map size stay inside ``grads``: they are formulas for the same gradients, picked
by size alone (no device, dtype or kernel switch in them). Figures: benchmarks/README.md, "LSLU kernels: why each
route exists".

Which backward a call gets (this one, the compiled kernel's in cpu_kernel.py, or PyTorch's autograd node) is
dispatch.py's choice; it passes the chosen ``conv`` and ``grads`` into ``with_cpu_backward``'s autograd Function.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from trainables.activations.lslu.reference import memory_format_of

TWO_CONV_KERNEL = 5  # the smallest kernel size whose CPU backward runs as two forward convolutions
DENSE_MAP = 64  # up to this many positions per map (8×8), dw comes from a matrix product (benchmarks/)


def conv(x: torch.Tensor, weight: torch.Tensor, padding: int, form=None) -> torch.Tensor:
    """``F.conv2d(s, weight, padding=padding, groups=C)`` with s = ``form.forward(x)`` (closed_form.ClosedForm), or x
    when ``form`` is None."""
    return F.conv2d(x if form is None else form.forward(x), weight, None, padding=padding, groups=x.shape[1])


def grads(x, weight, grad, padding: int, need_input: bool = True, need_weight: bool = True, form=None) -> tuple:
    """dx and dweight of ``conv(x, weight, padding, form)`` for the output's gradient ``grad``; dx is the gradient of
    s, and either is None where not needed. By kernel and map size: from 5×5 up two forward convolutions (dw by a
    matrix product on maps of up to ``DENSE_MAP`` positions), PyTorch's own backward below."""
    p, (n, c, h, w) = padding, x.shape
    if form is not None:
        x = form.forward(x)
    if weight.shape[-1] < TWO_CONV_KERNEL:
        dx, dw, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], c, [need_input, need_weight, False]
        )
        return dx, dw
    fmt = memory_format_of(x)
    x, grad = x.contiguous(), grad.contiguous()  # the grouped convolutions below are fastest in NCHW on the CPU
    dx = dw = None
    if need_input:
        dx = conv(grad, weight.flip(-1, -2), p).contiguous(memory_format=fmt)
    if need_weight and h * w <= DENSE_MAP:
        pairs = torch.bmm(grad.reshape(n, c, h * w).permute(1, 2, 0), x.reshape(n, c, h * w).transpose(0, 1))  # (C,p,q)
        k = weight.shape[-1]
        dw = (pairs.reshape(c, -1) @ _tap_matrix(h, w, k).to(x.dtype)).view(c, 1, k, k)
    elif need_weight:
        padded = F.pad(x, (p, p, p, p)).reshape(1, n * c, h + 2 * p, w + 2 * p)
        dw = F.conv2d(padded, grad.reshape(n * c, 1, h, w), groups=n * c)
        dw = dw.reshape(n, c, 2 * p + 1, 2 * p + 1).sum(0).unsqueeze(1)
    return dx, dw


@functools.lru_cache(maxsize=16)
def _tap_matrix(h: int, w: int, k: int) -> torch.Tensor:
    """(h·w·h·w, k²) zeros and ones: row (p, q) has a one at the tap (i, j) = q − p + (k // 2) that joins output
    position p to input position q, and none where q lies outside the kernel's reach."""
    r = k // 2
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy, dx = ys.view(1, -1) - ys.view(-1, 1) + r, xs.view(1, -1) - xs.view(-1, 1) + r  # (p, q)
    inside = ((dy >= 0) & (dy < k) & (dx >= 0) & (dx < k)).reshape(-1)
    taps = torch.zeros(h * w * h * w, k * k)
    taps[inside.nonzero().squeeze(1), (dy * k + dx).reshape(-1)[inside]] = 1
    return taps


class _DepthwiseCPU(torch.autograd.Function):
    """The depthwise conv by ``conv_fn``, its backward by ``grads_fn``: the pair dispatch chose at forward time."""

    @staticmethod
    def forward(ctx, x, weight, padding: int, conv_fn, grads_fn):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.grads = padding, grads_fn
        return conv_fn(x, weight, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*ctx.grads(x, weight, grad, ctx.padding, *ctx.needs_input_grad[:2]), None, None, None)


def with_cpu_backward(x: torch.Tensor, weight: torch.Tensor, padding: int, conv_fn, grads_fn) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=padding, groups=C)`` as an autograd Function that runs ``conv_fn`` forward and
    ``grads_fn`` backward (this file's ``conv`` and ``grads``, or cpu_kernel.py's)."""
    return _DepthwiseCPU.apply(x, weight, padding, conv_fn, grads_fn)
