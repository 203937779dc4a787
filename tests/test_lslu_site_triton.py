"""The Triton LSLU site (series recomputed inside the depthwise conv, lslu_site_triton.py), run by Triton's
interpreter on the CPU: forward, deploy form and every gradient against autograd on the unfused site, and the LSLU
module through it against the module's CPU route; and Triton's compilation of the kernels for a GPU. The module on a
real GPU with ``LSLU_KERNEL=site`` is in tests/test_cuda.py."""

import textwrap

import pytest
from triton_interpreter import run_interpreted

from trainables.activations.lslu.dispatch import kernel_choice

SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from trainables.activations.lslu import triton_site as S
    from trainables.activations.lslu.reference import series_forward
    torch.manual_seed(0)
    cases = [  # base, channel granularity, layout, kernel size: each layout, granularity and a non-ReLU base once
        ("relu", False, torch.contiguous_format, 7),
        ("relu", True, torch.channels_last, 3),
        ("silu", False, torch.channels_last, 5),
        ("gelu", True, torch.contiguous_format, 3),
    ]
    for base, channel, fmt, k in cases:
        n, c = 3, 5  # 5 channels and a 7×6 map: tiles with masked lanes, taps outside the map on every side
        x = torch.randn(2, c, 7, 6).contiguous(memory_format=fmt).requires_grad_()
        shape = (n, c) if channel else (n,)
        # |θ| in [0.5, 1.5), negative for some channels (one negative θ for a whole layer can make the site constant)
        sign = torch.where(torch.rand(shape) < 0.3, -1.0, 1.0) if channel else torch.ones(shape)
        theta = ((torch.rand(shape) + 0.5) * sign).requires_grad_()
        omega = (torch.rand(shape) - 0.5).requires_grad_()
        w = torch.randn(c, 1, k, k, requires_grad=True)
        b = torch.randn(c)
        ref = F.conv2d(series_forward(x, theta, omega, base, channel), w, None, padding=k // 2, groups=c)
        out = S.series_conv(x, theta, omega, w, None, base, channel)
        assert out.is_contiguous(memory_format=fmt), (base, fmt)
        big = [t for t in out.grad_fn.saved_tensors if t.shape == x.shape]
        assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "only x is kept, not f(y_n)"
        assert torch.allclose(out, ref, atol=1e-5), (base, channel, fmt, k, (out - ref).abs().max())
        with torch.no_grad():  # the deploy form: one kernel, bias included
            deploy = S.series_conv(x, theta, omega, w, b, base, channel)
        assert torch.allclose(deploy, ref + b.view(1, -1, 1, 1), atol=1e-5), (base, channel, fmt, k)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (x, theta, omega, w), g)
        got = torch.autograd.grad(out, (x, theta, omega, w), g)
        assert all(e.abs().max() > 0.05 for e in want), (base, "a gradient the case cannot check")
        for name, a, e in zip(("x", "theta", "omega", "weight"), got, want):
            assert a.shape == e.shape and a.dtype == e.dtype, (name, a.shape, e.shape)
            assert torch.allclose(a, e, rtol=1e-4, atol=1e-4), (base, channel, fmt, k, name, (a - e).abs().max())
    # an expanded gradient (all strides 0, as ``.sum()`` gives it) reaches the kernels as it is
    out = S.series_conv(x, theta, omega, w, None, base, channel)
    ref = F.conv2d(series_forward(x, theta, omega, base, channel), w, None, padding=k // 2, groups=c)
    for a, e in zip(torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(ref.sum(), (x, w))):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-4), "expanded gradient"

    # the LSLU module's route to it (on CUDA with LSLU_KERNEL=site; here the CPU tensors the interpreter takes):
    # training step with BatchNorm in the site's function (SeriesConvBatchNorm), and the deploy form, against the
    # module's CPU route
    import copy
    from lslu_factory import randomized_lslu
    from trainables.activations.lslu import dispatch
    route, cpu_site, cpu_kernel = {"site": False}, dispatch.cpu_site_applies, dispatch.cpu_kernel_applies
    dispatch.triton_site_kernels = lambda x: S if route["site"] else None
    calls = []

    def counted(name, fn):
        def call(*args):
            calls.append(name)
            return fn(*args)
        return call

    S.series_conv_batch_norm = counted("train", S.series_conv_batch_norm)
    S.series_conv = counted("deploy", S.series_conv)
    for granularity, fmt in (("layer", torch.contiguous_format), ("channel", torch.channels_last)):
        modules = {False: randomized_lslu("relu", granularity, n=3, channels=6, seed=1, theta=(-1.5, 1.5)).float()}
        modules[True] = copy.deepcopy(modules[False])
        x = torch.randn(3, 6, 7, 5).contiguous(memory_format=fmt).requires_grad_()
        g = torch.randn_like(x)
        results = {}
        for site, m in modules.items():
            route["site"] = site
            # the CPU's own site and inference kernel take CPU tensors first; on CUDA they never serve
            dispatch.cpu_site_applies = (lambda *args: False) if site else cpu_site
            dispatch.cpu_kernel_applies = (lambda *args: False) if site else cpu_kernel
            out = m(x)
            if site:  # BatchNorm inside the site's function: of the site's size, x alone is kept
                big = [t for t in out.grad_fn.saved_tensors if t.shape == x.shape]
                assert type(out.grad_fn).__name__ == "SeriesConvBatchNormBackward", out.grad_fn
                assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "only x is kept, not the conv's output"
            results[site] = [out, *torch.autograd.grad((out * g).sum(), (x, *m.parameters())),
                             m.bn.running_mean.clone(), m.bn.running_var.clone(), m.bn.num_batches_tracked.clone()]
            m.eval().fuse()
            with torch.no_grad():
                results[site].append(m(x))
        for a, e in zip(results[True], results[False]):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    assert calls == ["train", "deploy"] * 2, calls  # each granularity took the Triton route in training and deployed
    print("checked", len(cases))
""")


@pytest.mark.slow
def test_triton_site_matches_autograd_on_the_unfused_site_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is not installed (it comes with CUDA builds of torch)")
    assert "checked 4" in run_interpreted(SCRIPT)


def test_an_unknown_kernel_choice_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("LSLU_KERNEL", "fused")
    with pytest.raises(ValueError, match="LSLU_KERNEL='fused' is not one of triton, site, eager"):
        kernel_choice()
    monkeypatch.setenv("LSLU_KERNEL", "site")
    assert kernel_choice() == "site"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_triton_kernels_compile_for_a_hopper_gpu(dtype, tmp_path, monkeypatch):
    """What the interpreter does not check: that Triton compiles the site's kernels and the series' pair to a cubin
    for sm_90 (done here on the CPU, with the ptxas Triton ships), in each configuration the launchers use."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (it comes with CUDA builds of torch)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trainables.activations.lslu import triton_site as S
    from trainables.activations.lslu import triton_series as T

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compile, do not load an earlier result
    data, params = f"*{dtype}", "*fp32"
    layouts = [dict(BLOCK_P=32, BLOCK_C=64), dict(BLOCK_P=128, BLOCK_C=8)]  # channels_last, NCHW (S._blocks)
    conv_ptrs = dict(x_ptr=data, w_ptr=data, b_ptr=data, out_ptr=data, theta_ptr=params, omega_ptr=params)
    grad_ptrs = dict(x_ptr=data, g_ptr=data, part_ptr=params, theta_ptr=params, omega_ptr=params)
    kernels = []
    for blocks in layouts:
        kernels += [
            (S._dw_conv, conv_ptrs, dict(K=7, FLIP=False, HAS_BIAS=bias, N_TERMS=3, BASE=0, MODE=mode, **blocks))
            for bias in (False, True)
            for mode in (0, 2)
        ]
        kernels.append(
            (S._dw_conv, conv_ptrs, dict(K=7, FLIP=True, HAS_BIAS=False, N_TERMS=0, BASE=0, MODE=0, **blocks))
        )
        kernels.append((S._dw_weight_grad, grad_ptrs, dict(K=5, N_TERMS=2, BASE=2, MODE=2, **blocks)))
    # the series' own pair, which shares the series' steps (lslu_triton._terms) with the site kernels
    series_ptrs = dict(
        x_ptr=data,
        out_ptr=data,
        g_ptr=data,
        dx_ptr=data,
        theta_ptr=params,
        omega_ptr=params,
        dtheta_ptr=params,
        domega_ptr=params,
    )
    kernels += [
        (fn, series_ptrs, dict(N_TERMS=3, BASE=1, MODE=mode, BLOCK_R=16, BLOCK_K=256))
        for fn in (T._series_fwd, T._series_bwd)
        for mode in (0, 1, 2)
    ]
    for fn, ptrs, constexprs in kernels:
        signature = {name: ptrs.get(name, "i32") for name in fn.arg_names}
        signature.update({name: "constexpr" for name in constexprs})
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], (fn.__name__, constexprs)
