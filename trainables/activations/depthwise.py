"""A depthwise convolution whose CPU backward, for kernels of 5×5 and more, is two forward convolutions.

PyTorch's CPU backward for depthwise convolutions with large kernels is slow (7×7, NCHW: ~20× its forward, measured
in benchmarks/). Both gradients are themselves depthwise convolutions, which run at forward speed:

    dx = depthwise_conv(g, flip(w))                                   (same padding)
    dw[c] = Σ_n  conv(pad(x)[n, c], g[n, c])                          (one group per (n, c), summed over n)

The second one runs one group per image and channel, which costs more than its work on small maps: up to 8×8, dw
comes instead from one batched matrix product over the images, Σ_n g[n, c, p] x[n, c, q] for every output position p
and input position q, whose (p, q) pairs are then summed into the kernel tap q − p they share (``_tap_matrix``):
32×512×4×4 at 7×7, 0.55 ms against 4.2 ms; at 8×8 about even with 32 images and ahead with more.
For 3×3 kernels PyTorch's own backward is the faster one, in both layouts (32×64×32×32 to 32×512×4×4: 0.6–0.9× the
time of the two convolutions), so it keeps them. CUDA (cuDNN) keeps ``F.conv2d``.

All of these are the fallback where the compiled CPU kernel (lslu_cpu.py) does not serve: a float32 tensor of at
least 8 channels in NCHW or channels_last takes it for the forward conv, dx (the same kernel, flipped taps) and dw,
at 32 images 0.35–0.9× the time of the routes above (7×7: 10.3 against 27.2 ms at 64×32×32 in NCHW; 3×3 in
channels_last about even with PyTorch's backward; benchmarks/README.md).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from trainables.activations import lslu_cpu


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out that way (and not also plain contiguous), else contiguous_format."""
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format


def conv_no_grad(x: torch.Tensor, weight: torch.Tensor, padding: int, form=None) -> torch.Tensor:
    """``F.conv2d(s, weight, padding=padding, groups=C)`` with s = ``form.forward(x)`` (lslu_relu.ClosedForm), or x
    when ``form`` is None, for calls that want no gradient (inside autograd Functions): the compiled CPU kernel where
    it serves (lslu_cpu.py, which reads x and never writes s), PyTorch's ops elsewhere."""
    if 2 * padding + 1 == weight.shape[-1] and lslu_cpu.serves(x):
        return lslu_cpu.series_conv(x, weight, None, form, {})
    return F.conv2d(x if form is None else form.forward(x), weight, None, padding=padding, groups=x.shape[1])


class _DepthwiseCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return conv_no_grad(x, weight, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*depthwise_grads(x, weight, grad, ctx.padding, *ctx.needs_input_grad[:2]), None)


TWO_CONV_KERNEL = 5  # the smallest kernel size whose CPU backward runs as two forward convolutions
DENSE_MAP = 64  # up to this many positions per map (8×8), dw comes from a matrix product (benchmarks/)


def depthwise_grads(x, weight, grad, padding: int, need_input: bool = True, need_weight: bool = True, form=None):
    """dx and dweight of ``F.conv2d(s, weight, padding=padding, groups=C)`` on the CPU with s = x, or with ``form``
    (lslu_relu.ClosedForm) s = ``form.forward(x)``; dx is the gradient of s. By the faster route: the compiled
    kernel where it serves (lslu_cpu.py: dx a forward conv with the flipped kernel, dw with s recomputed inside it,
    never written), else by kernel and map size: from 5×5 up two forward convolutions (dw by a matrix product on maps
    of up to ``DENSE_MAP`` positions), PyTorch's own backward below."""
    p, (n, c, h, w) = padding, x.shape
    if 2 * p + 1 == weight.shape[-1] and lslu_cpu.serves(x):
        grad = grad.contiguous(memory_format=memory_format_of(x))  # the kernel takes x and grad in one layout
        dx = conv_no_grad(grad, weight.flip(-1, -2), p) if need_input else None
        return dx, lslu_cpu.weight_grad(x, grad, form, weight.shape[-1]) if need_weight else None
    if form is not None:
        x = form.forward(x)
    if weight.shape[-1] < TWO_CONV_KERNEL:
        dx, dw, _ = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], c,
                                                         [need_input, need_weight, False])
        return dx, dw
    fmt = memory_format_of(x)
    x, grad = x.contiguous(), grad.contiguous()  # the grouped convolutions below are fastest in NCHW on the CPU
    dx = dw = None
    if need_input:
        dx = conv_no_grad(grad, weight.flip(-1, -2), p).contiguous(memory_format=fmt)
    if need_weight and h * w <= DENSE_MAP:
        pairs = torch.bmm(grad.reshape(n, c, h * w).permute(1, 2, 0), x.reshape(n, c, h * w).transpose(0, 1))  # (C, p, q)
        k = weight.shape[-1]
        dw = (pairs.reshape(c, -1) @ _tap_matrix(h, w, k).to(x.dtype)).view(c, 1, k, k)
    elif need_weight:
        padded = F.pad(x, (p, p, p, p)).reshape(1, n * c, h + 2 * p, w + 2 * p)
        dw = F.conv2d(padded, grad.reshape(n * c, 1, h, w), groups=n * c).reshape(n, c, 2 * p + 1, 2 * p + 1).sum(0).unsqueeze(1)
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


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` with the fast CPU backward when training on the CPU."""
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if x.device.type == "cpu" and bias is None and training and weight.shape[-1] >= TWO_CONV_KERNEL:
        return _DepthwiseCPU.apply(x, weight, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])
