"""The Triton kernels of LSLU's series, run by Triton's interpreter on the CPU (the GPU run is tests/test_cuda.py)."""

import textwrap

import pytest
from triton_interpreter import run_interpreted

pytest.importorskip("triton", reason="Triton is not installed (it comes with CUDA builds of torch)")

SCRIPT = textwrap.dedent("""
    import torch
    from trainables.activations.lslu import triton_series as T
    from trainables.activations.lslu.reference import series_backward, series_forward
    torch.manual_seed(0)
    checked = 0
    for base in ("relu", "silu", "gelu"):
        for channel in (False, True):
            for fmt in (torch.contiguous_format, torch.channels_last):
                n, c = (3, 5) if channel else (2, 3)
                x = torch.randn(3, c, 7, 6).contiguous(memory_format=fmt)
                g = torch.randn(3, c, 7, 6).contiguous(memory_format=fmt)
                shape = (n, c) if channel else (n,)
                theta, omega = torch.rand(shape) + 0.5, torch.rand(shape) - 0.5
                assert T.layout(x) is not None
                out = T.series_forward(x, theta, omega, base, channel)
                ref = series_forward(x, theta, omega, base, channel)
                assert torch.allclose(out, ref, atol=1e-5), (base, channel, fmt)
                got_grads = T.series_backward(x, theta, omega, g, base, channel)
                want_grads = series_backward(x, theta, omega, g, base, channel)
                for got, want in zip(got_grads, want_grads):
                    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (base, channel, fmt)
                checked += 1
    print("checked", checked)
""")


@pytest.mark.slow
def test_triton_kernels_match_the_reference_series_in_the_interpreter():
    assert "checked 12" in run_interpreted(SCRIPT)
