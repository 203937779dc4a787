"""The depthwise convolution with its own CPU backward: exact gradients in both memory formats."""
import pytest
import torch
import torch.nn.functional as F

from trainables.activations.depthwise import depthwise_conv


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("padding", [0, 1, 3])
def test_gradients_match_finite_differences_and_autograd(fmt, padding):
    torch.manual_seed(padding)
    x = torch.randn(3, 5, 9, 7, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(5, 1, 2 * padding + 1, 2 * padding + 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv(a, b, None, padding), (x, w))
    g = torch.randn(3, 5, 9 + 2 * padding - 2 * padding, 7, dtype=torch.float64)
    want = torch.autograd.grad(F.conv2d(x, w, padding=padding, groups=5), (x, w), g)
    out = depthwise_conv(x, w, None, padding)
    got = torch.autograd.grad(out, (x, w), g)
    assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
    assert got[0].is_contiguous(memory_format=fmt)  # the gradient keeps the input's layout
