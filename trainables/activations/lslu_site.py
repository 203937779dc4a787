"""A training-mode LSLU site (series, depthwise conv, BatchNorm) as one autograd function that keeps only x.

Autograd on the three parts keeps, besides x, the conv's input f(y_n) and BatchNorm's input (the conv's output): three
tensors of the site's size where a ReLU site keeps one, which the next layer keeps anyway. Here backward rebuilds both:

    conv output = μ + (out − β) / (γ · invstd)     from the site's output, which the next layer keeps for its own backward
    f(y_n)      = clamp(A x + B, lo, hi)           from x, one pass (lslu_relu.py)

so the site adds x alone to what a ReLU network keeps (the in-place activated BatchNorm idea, Rota Bulò et al. 2018).
It serves where each part has its measured CPU path: a ReLU series in closed form, the depthwise conv and its
gradients by the compiled kernel, which reads x and computes f(y_n) inside (lslu_cpu.py), or else by the faster
route for the kernel size (depthwise.py), BatchNorm's own kernels; and only while every |γ| ≥ ``GAMMA_FLOOR``, as dividing by γ is how the conv's
output comes back. Elsewhere the parts run as modules. An in-place change of the site's output before backward (the
next layer's ``x += …``) is refused by autograd, as for any saved output.
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.activations.depthwise import conv_no_grad, depthwise_grads
from trainables.activations import lslu_relu
from trainables.activations.lslu_relu import ClosedForm

GAMMA_FLOOR = 1e-2  # below it, (out − β) / γ loses too many digits of the conv's output: keep the modules


def serves(base: str, x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether ``site`` can run this training step (but for θ_i = 0, which ``ClosedForm.of`` tells)."""
    return (lslu_relu.serves(base, x) and not torch.is_autocast_enabled("cpu") and batch_norm_serves(x, bn)
            and bool(bn.weight.detach().abs().min() >= GAMMA_FLOOR))


def batch_norm_serves(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether a site function can take over ``bn`` for this step: a training step of an affine BatchNorm2d that
    tracks running statistics (here and in lslu_site_triton.py)."""
    return (torch.is_grad_enabled() and isinstance(bn, nn.BatchNorm2d) and bn.training and bn.affine and bn.track_running_stats
            and x.shape[0] * x.shape[2] * x.shape[3] > 1)  # BatchNorm's own error for one value per channel


def momentum_factor(bn: nn.BatchNorm2d) -> float:
    """The running statistics' update factor for this step, counting it, as ``bn(…)`` does in training."""
    if bn.num_batches_tracked is None:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def batch_norm_step(conv, gamma, beta, running_mean, running_var, factor: float, eps: float) -> tuple:
    """BatchNorm of a training step inside a site function: (out, mean, invstd), the running statistics updated in
    place (here and in lslu_site_triton.py)."""
    return torch.ops.aten.native_batch_norm(conv, gamma, beta, running_mean, running_var, True, factor, eps)


def batch_norm_step_grads(grad, conv, gamma, mean, invstd, eps: float, needs) -> tuple:
    """(d_conv, dγ, dβ) of ``batch_norm_step`` from its statistics; ``needs`` is the site function's
    needs_input_grad, whose arguments 4 and 5 are γ and β in both site functions."""
    return torch.ops.aten.native_batch_norm_backward(grad, conv, gamma, None, None, mean, invstd, True, eps,
                                                     [True, needs[4], needs[5]])


def site(x: torch.Tensor, theta: torch.Tensor, omega: torch.Tensor, weight: torch.Tensor, bn: nn.BatchNorm2d,
         form: ClosedForm) -> torch.Tensor:
    """bn(depthwise_conv(f(y_n))) in training mode, BatchNorm's running statistics updated as ``bn(…)`` does."""
    return _Site.apply(x, theta, omega, weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum_factor(bn),
                       bn.eps, form)


class _Site(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, omega, weight, gamma, beta, running_mean, running_var, factor, eps, form):
        padding = weight.shape[-1] // 2  # n: the kernel is (2n + 1)²
        conv = conv_no_grad(x, weight, padding, form)  # f(y_n) computed inside the compiled kernel where it serves
        out, mean, invstd = batch_norm_step(conv, gamma, beta, running_mean, running_var, factor, eps)
        ctx.save_for_backward(x, out, weight, gamma, beta, mean, invstd)
        ctx.form, ctx.padding, ctx.eps = form, padding, eps
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out, weight, gamma, beta, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        scale = 1 / (gamma * invstd)  # conv = μ + (out − β) · scale
        shape = (1, -1, 1, 1)
        conv = torch.addcmul((mean - beta * scale).view(shape), out, scale.view(shape))
        d_conv, d_gamma, d_beta = batch_norm_step_grads(grad, conv, gamma, mean, invstd, ctx.eps, need)
        del conv
        d_series, d_weight = depthwise_grads(x, weight, d_conv, ctx.padding, True, need[3], form=ctx.form)
        del d_conv
        dx, d_theta, d_omega = ctx.form.backward(x, d_series, need[0])
        return dx, d_theta, d_omega, d_weight, d_gamma, d_beta, None, None, None, None, None
