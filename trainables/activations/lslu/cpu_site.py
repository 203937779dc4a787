"""A training-mode LSLU site (series, depthwise conv, BatchNorm) as one autograd function that keeps only x.

Autograd on the three parts keeps, besides x, the conv's input f(y_n) and BatchNorm's input (the conv's output): three
tensors of the site's size where a ReLU site keeps one, which the next layer keeps anyway. Here backward rebuilds both:

    conv output = μ + (out − β) / (γ · invstd)     from the site's output, which the next layer keeps for its backward
    f(y_n)      = clamp(A x + B, lo, hi)           from x, one pass (closed_form.py)

so the site adds x alone to what a ReLU network keeps (the in-place activated BatchNorm idea, Rota Bulò et al. 2018).
The depthwise conv and its gradients are the ``conv`` and ``grads`` dispatch.py passes in (the compiled kernel's,
which reads x and computes f(y_n) inside, cpu_kernel.py, or PyTorch's, cpu_depthwise.py); where the site serves at all
(a ReLU series in closed form, a BatchNorm training step, |γ| large enough to divide by) is dispatch.py's choice too.
An in-place change of the site's output before backward (the next layer's ``x += …``) is refused by autograd, as for
any saved output.

``momentum_factor``, ``batch_norm_step`` and ``batch_norm_step_grads`` are BatchNorm's training step inside a site
function, here and in triton_site.py.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.activations.lslu.closed_form import ClosedForm


def momentum_factor(bn: nn.BatchNorm2d) -> float:
    """The running statistics' update factor for this step, counting it, as ``bn(…)`` does in training."""
    if bn.num_batches_tracked is None:
        return 0.0
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def batch_norm_step(conv, gamma, beta, running_mean, running_var, factor: float, eps: float) -> tuple:
    """BatchNorm of a training step inside a site function: (out, mean, invstd), the running statistics updated in
    place (here and in triton_site.py)."""
    return torch.ops.aten.native_batch_norm(conv, gamma, beta, running_mean, running_var, True, factor, eps)


def batch_norm_step_grads(grad, conv, gamma, mean, invstd, eps: float, needs) -> tuple:
    """(d_conv, dγ, dβ) of ``batch_norm_step`` from its statistics; ``needs`` is the site function's
    needs_input_grad, whose arguments 4 and 5 are γ and β in both site functions."""
    return torch.ops.aten.native_batch_norm_backward(
        grad, conv, gamma, None, None, mean, invstd, True, eps, [True, needs[4], needs[5]]
    )


def site(
    x: torch.Tensor,
    theta: torch.Tensor,
    omega: torch.Tensor,
    weight: torch.Tensor,
    bn: nn.BatchNorm2d,
    form: ClosedForm,
    conv,
    grads,
) -> torch.Tensor:
    """bn(depthwise_conv(f(y_n))) in training mode, BatchNorm's running statistics updated as ``bn(…)`` does; the
    conv by ``conv(x, weight, padding, form)``, its gradients by ``grads(x, weight, grad, padding, need_input,
    need_weight, form)`` (cpu_kernel.py's or cpu_depthwise.py's pair)."""
    return _Site.apply(
        x,
        theta,
        omega,
        weight,
        bn.weight,
        bn.bias,
        bn.running_mean,
        bn.running_var,
        momentum_factor(bn),
        bn.eps,
        form,
        conv,
        grads,
    )


class _Site(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, theta, omega, weight, gamma, beta, running_mean, running_var, factor, eps, form, conv, grads):
        padding = weight.shape[-1] // 2  # n: the kernel is (2n + 1)²
        conv_out = conv(x, weight, padding, form)  # f(y_n) computed inside the compiled kernel where that is the route
        out, mean, invstd = batch_norm_step(conv_out, gamma, beta, running_mean, running_var, factor, eps)
        ctx.save_for_backward(x, out, weight, gamma, beta, mean, invstd)
        ctx.form, ctx.padding, ctx.eps, ctx.grads = form, padding, eps, grads
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
        d_series, d_weight = ctx.grads(x, weight, d_conv, ctx.padding, True, need[3], form=ctx.form)
        del d_conv
        dx, d_theta, d_omega = ctx.form.backward(x, d_series, need[0])
        return dx, d_theta, d_omega, d_weight, d_gamma, d_beta, None, None, None, None, None, None, None
