"""A depthwise convolution whose CPU backward is two forward convolutions.

PyTorch's CPU backward for depthwise convolutions with large kernels is slow (7×7, NCHW: ~20× its forward, measured
in benchmarks/). Both gradients are themselves depthwise convolutions, which run at forward speed:

    dx = depthwise_conv(g, flip(w))                                   (same padding)
    dw[c] = Σ_n  conv(pad(x)[n, c], g[n, c])                          (one group per (n, c), summed over n)

CUDA (cuDNN) and inference keep ``F.conv2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out that way (and not also plain contiguous), else contiguous_format."""
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format


class _DepthwiseCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, None, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return (*depthwise_grads(x, weight, grad, ctx.padding, *ctx.needs_input_grad[:2]), None)


def depthwise_grads(x, weight, grad, padding: int, need_input: bool = True, need_weight: bool = True):
    """dx and dweight of ``F.conv2d(x, weight, padding=padding, groups=C)`` as two forward convolutions."""
    p, (n, c, h, w) = padding, x.shape
    fmt = memory_format_of(x)
    x, grad = x.contiguous(), grad.contiguous()  # the grouped convolutions below are fastest in NCHW on the CPU
    dx = dw = None
    if need_input:
        dx = F.conv2d(grad, weight.flip(-1, -2), padding=p, groups=c).contiguous(memory_format=fmt)
    if need_weight:
        padded = F.pad(x, (p, p, p, p)).reshape(1, n * c, h + 2 * p, w + 2 * p)
        dw = F.conv2d(padded, grad.reshape(n * c, 1, h, w), groups=n * c).reshape(n, c, 2 * p + 1, 2 * p + 1).sum(0).unsqueeze(1)
    return dx, dw


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` with the fast CPU backward when training on the CPU."""
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    # channels_last with a 3×3 kernel: PyTorch's own backward is the faster one (benchmarks/)
    if x.device.type == "cpu" and bias is None and training and (x.is_contiguous() or weight.shape[-1] >= 5):
        return _DepthwiseCPU.apply(x, weight, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])
