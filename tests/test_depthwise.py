"""The depthwise convolution with its own CPU backward: exact gradients in both memory formats, by either route."""

import pytest
import torch
import torch.nn.functional as F

from trainables.activations.lslu.cpu_depthwise import DENSE_MAP, TWO_CONV_KERNEL
from trainables.activations.lslu.dispatch import depthwise_conv, depthwise_grads


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("padding", [0, 1, 2, 3])
def test_gradients_match_finite_differences_and_autograd(fmt, padding):
    torch.manual_seed(padding)
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(5, 1, 2 * padding + 1, 2 * padding + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv(a, b, None, padding), (x, w))
    g = torch.randn(3, 5, 9, 7, dtype=torch.float64)
    want = torch.autograd.grad(F.conv2d(x, w, padding=padding, groups=5), (x, w), g)
    out = depthwise_conv(x, w, None, padding)
    got = torch.autograd.grad(out, (x, w), g)
    assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
    assert got[0].is_contiguous(memory_format=fmt)  # the gradient keeps the input's layout


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("padding", [1, 2, 3])
@pytest.mark.parametrize("height, width", [(8, 5), (3, 2), (11, 9)])
def test_depthwise_grads_equal_autograd_by_each_route(fmt, padding, height, width):
    """3×3 through PyTorch's own backward; 5×5 and 7×7 through two forward convolutions, dw by the matrix product on
    maps of up to DENSE_MAP positions (8×5, and 3×2, smaller than the kernel) and by a convolution above (11×9).
    Each gradient alone too."""
    assert (height * width <= DENSE_MAP) != ((height, width) == (11, 9))
    torch.manual_seed(10 + padding)
    x = torch.randn(4, 6, height, width, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(6, 1, 2 * padding + 1, 2 * padding + 1, dtype=torch.float64, requires_grad=True)
    g = torch.randn(x.shape, dtype=torch.float64)
    want_dx, want_dw = torch.autograd.grad(F.conv2d(x, w, padding=padding, groups=6), (x, w), g)
    dx, dw = depthwise_grads(x.detach(), w.detach(), g, padding)
    assert torch.allclose(dx, want_dx, atol=1e-12) and torch.allclose(dw, want_dw, atol=1e-12)
    assert dx.is_contiguous(memory_format=fmt)
    assert depthwise_grads(x.detach(), w.detach(), g, padding, True, False)[1] is None
    only_dw = depthwise_grads(x.detach(), w.detach(), g, padding, False, True)
    assert only_dw[0] is None and torch.allclose(only_dw[1], want_dw, atol=1e-12)


def test_training_routes_by_kernel_size():
    """A 3×3 kernel keeps PyTorch's autograd node (its backward is the faster one); 5×5 and up take the two
    convolutions."""
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    for k in (3, TWO_CONV_KERNEL, 7):
        out = depthwise_conv(x, torch.randn(3, 1, k, k), None, k // 2)
        assert ("_DepthwiseCPU" in type(out.grad_fn).__name__) == (k >= TWO_CONV_KERNEL), k
