"""The CPU inference kernel (trainables/activations/lslu_cpu.py, lslu_cpu.cpp): the series and the depthwise conv in
one compiled pass, against the plain series followed by ``F.conv2d`` computed independently in float64."""

import copy
import gc
import io
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.lslu_factory import randomized_lslu
from trainables.activations.lslu import cpu_kernel as lslu_cpu
from trainables.activations.lslu.closed_form import ClosedForm
from trainables.activations.lslu.reference import series_forward
from trainables.models.vanillanet import VanillaAct

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

pytestmark = pytest.mark.skipif(lslu_cpu.library() is None, reason="no C++ compiler here: the kernel cannot be built")


def reference(x, theta, omega, weight, bias, channel):
    """conv(f(y_n)) in float64 from the plain series (lslu_series.series_forward), not the closed form."""
    series = series_forward(x.double(), theta.double(), omega.double(), "relu", channel)
    out = F.conv2d(
        series,
        weight.double(),
        None if bias is None else bias.double(),
        padding=weight.shape[-1] // 2,
        groups=x.shape[1],
    )
    return out


def assert_close(out, ref):
    scale = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 2e-6 * scale + 1e-6, (out.double() - ref).abs().max().item()


# (N, C, H, W, n): a partial channel block (13, 11), odd maps, kernels larger than the map, 1×1, K = 3..11 (11 takes
# the kernel's generic path, 3..9 its unrolled ones)
CASES = [(1, 64, 12, 12, 3), (2, 13, 7, 6, 2), (1, 16, 4, 4, 3), (3, 8, 1, 1, 1), (1, 9, 9, 5, 4), (2, 11, 5, 8, 5)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_the_kernel_equals_the_plain_series_then_a_depthwise_conv(case, layout):
    n_img, c, h, w, n = case
    torch.manual_seed(sum(case))
    x = torch.randn(n_img, c, h, w).contiguous(memory_format=LAYOUTS[layout])
    weight, bias = torch.randn(c, 1, 2 * n + 1, 2 * n + 1), torch.randn(c)
    threads = torch.get_num_threads()
    try:
        for channel in (False, True):
            shape = (n, c) if channel else (n,)
            theta = torch.empty(shape).uniform_(-1.5, 1.5)  # both signs: bounded above and below
            omega = torch.empty(shape).uniform_(-0.5, 0.5)
            form = ClosedForm.of(theta, omega)
            for b in (None, bias):
                for count in (1, 2):  # jobs split over threads, one buffer each
                    torch.set_num_threads(count)
                    out = lslu_cpu.series_conv(x, weight, b, form, {})
                    assert out.shape == x.shape and out.is_contiguous(memory_format=LAYOUTS[layout])
                    assert_close(out, reference(x, theta, omega, weight, b, channel))
                    # without a form, x is taken as f(y_n) already (SiLU, GELU bases): the conv alone
                    plain = lslu_cpu.series_conv(x, weight, b, None, {})
                    assert_close(
                        plain,
                        F.conv2d(x.double(), weight.double(), None if b is None else b.double(), padding=n, groups=c),
                    )
    finally:
        torch.set_num_threads(threads)


def test_a_nan_spreads_as_in_the_conv_it_replaces():
    """The clamp keeps a NaN (comparisons, as torch.clamp, not fmin/fmax, which would drop it)."""
    x = torch.randn(1, 8, 9, 9)
    x[0, 3, 4, 4] = float("nan")
    theta, omega = torch.tensor([1.2, -0.7]), torch.tensor([0.1, 0.4])  # bounded above: both clamps see the NaN
    form = ClosedForm.of(theta, omega)
    weight = torch.randn(8, 1, 5, 5)
    out = lslu_cpu.series_conv(x, weight, None, form, {})
    ref = F.conv2d(form.forward(x), weight, None, padding=2, groups=8)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().sum() == 25
    assert_close(out.nan_to_num(), ref.nan_to_num().double())


@pytest.fixture
def calls(monkeypatch):
    """How often the kernel ran (the built entry point, wrapped)."""
    built, count = lslu_cpu.library(), {"n": 0}

    def counted(*args):
        count["n"] += 1
        return built.lslu_site_forward(*args)

    counting = types.SimpleNamespace(lslu_site_forward=counted, lslu_site_weight_grad=built.lslu_site_weight_grad)
    monkeypatch.setattr(lslu_cpu, "library", lambda: counting)
    return count


def eager(module, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("LSLU_KERNEL", "eager")
        return module(x)


@pytest.mark.parametrize("base", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_module_runs_inference_through_the_kernel(base, granularity, layout, calls, monkeypatch):
    """Eval (BatchNorm after the kernel) and deploy form (BatchNorm folded into its weight and bias) both equal the
    module's path with the kernel off (``LSLU_KERNEL=eager``: the series, then ``F.conv2d``)."""
    act = randomized_lslu(base, granularity, channels=12, theta=(-1.5, 1.5)).float().eval()
    x = torch.randn(2, 12, 10, 10).contiguous(memory_format=LAYOUTS[layout])
    with torch.inference_mode():
        for form in ("eval", "deploy"):
            if form == "deploy":
                act.fuse()
            before = calls["n"]
            out = act(x)
            assert calls["n"] == before + 1
            ref = eager(act, x, monkeypatch)
            assert calls["n"] == before + 1
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", ["relu", "silu"])
def test_vanillanets_activation_runs_inference_through_the_kernel(base, calls, monkeypatch):
    """VanillaNet's series activation (relu(x), or silu, then the depthwise conv and BatchNorm) takes the same kernel
    in eval and deploy form, against its path with the kernel off."""
    act = VanillaAct(16, act_num=3, base=base).eval()
    with torch.no_grad():
        act.weight.normal_(0, 0.3)
        act.bn.running_var.uniform_(0.5, 2.0)
        act.bn.bias.uniform_(-1, 1)
        x = torch.randn(2, 16, 9, 9)
        for form in ("eval", "deploy"):
            if form == "deploy":
                act.fuse()
            out = act(x)
            torch.testing.assert_close(out, eager(act, x, monkeypatch), rtol=1e-5, atol=1e-5)
    assert calls["n"] == 2


def test_a_module_built_under_inference_mode_runs(calls, monkeypatch):
    """Its parameters are inference tensors, which keep no version counter for the memos' keys."""
    reference = randomized_lslu(channels=16).float().eval()
    x = torch.randn(1, 16, 7, 7)
    with torch.inference_mode():
        act = copy.deepcopy(reference)
        act.load_state_dict(reference.state_dict())
        built = type(reference)(16).eval()
        built.load_state_dict(reference.state_dict())
        for module in (act, built):
            torch.testing.assert_close(module(x), eager(reference, x, monkeypatch), rtol=1e-5, atol=1e-5)
            module.fuse()
            torch.testing.assert_close(module(x), eager(reference, x, monkeypatch), rtol=1e-5, atol=1e-5)
    assert calls["n"] == 4


def test_the_operands_follow_the_weights(calls, monkeypatch):
    """Remade when the weight changes in place, its storage is replaced, the bias changes, or θ, ω change."""
    act = randomized_lslu(channels=16).float().eval().fuse()
    x = torch.randn(1, 16, 6, 6)
    changes = [
        lambda: act.weight.mul_(-2),
        lambda: setattr(act.weight, "data", torch.randn_like(act.weight)),
        lambda: act.bias.add_(1),
        lambda: act.theta.mul_(0.5),
        lambda: act.omega.sub_(0.25),
    ]
    with torch.no_grad():
        previous = act(x)
        for change in changes:
            change()
            out = act(x)
            assert not torch.allclose(out, previous)
            torch.testing.assert_close(out, eager(act, x, monkeypatch), rtol=1e-5, atol=1e-5)
            previous = out
    assert calls["n"] == 1 + len(changes)


def test_copies_and_pickles_do_not_carry_the_originals_addresses(monkeypatch):
    """The operand table holds addresses: a deep copy or a pickled module remakes its own instead of reading the
    original's, which may be gone."""
    act = randomized_lslu(channels=16).float().eval().fuse()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        expected = act(x)  # fills the original's operands
        clone = copy.deepcopy(act)
        buffer = io.BytesIO()
        torch.save(act, buffer)
        del act
        gc.collect()
        litter = [torch.full((16 * 8 * 8,), float("nan")) for _ in range(64)]  # over the freed operands, were they read
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for module in (clone, loaded):
            torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    del litter


def test_what_the_kernel_does_not_serve_runs_as_before(calls, monkeypatch):
    act = randomized_lslu(channels=16).float().eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        act(x[:, :, ::2])  # not dense
        act.double()(x.double())  # float64
        act.float()
        randomized_lslu(channels=4).float().eval()(x[:, :4])  # fewer channels than a block
        eager(act, x, monkeypatch)
        exported = torch.export.export(act, (x,)).module()  # an export needs the ops: the kernel's call is no op
    assert calls["n"] == 0
    other = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(exported(other), act(other), rtol=1e-5, atol=1e-5)
    assert calls["n"] == 1


def training_step(act, x):
    x = x.detach().clone().requires_grad_()
    out = act(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    grads = {name: p.grad for name, p in act.named_parameters()}
    act.zero_grad(set_to_none=True)
    return out, x.grad, grads


@pytest.mark.parametrize("base", ["relu", "silu"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_training_step_through_the_kernel_equals_the_ops(base, n, layout, calls, monkeypatch):
    """Training: the site's forward conv, its input gradient (the conv with flipped taps) and its weight gradient
    (f(y_n) recomputed from x inside the kernel) against the same step with the kernel off: output, dx, every
    parameter's gradient, BatchNorm's running statistics. ReLU runs as lslu_site's one function, SiLU as the
    series' autograd followed by the depthwise conv's own function (n = 3 only: a 3×3 kernel keeps F.conv2d)."""
    for granularity in ("layer", "channel"):
        act = randomized_lslu(base, granularity, n=n, channels=12).float().train()
        twin = copy.deepcopy(act)
        x = torch.randn(4, 12, 9, 7).contiguous(memory_format=LAYOUTS[layout])
        before = calls["n"]
        out, dx, grads = training_step(act, x)
        assert calls["n"] == before + (0 if base == "silu" and n == 1 else 2)  # the forward conv, and dx in backward
        with monkeypatch.context() as m:
            m.setenv("LSLU_KERNEL", "eager")
            ref_out, ref_dx, ref_grads = training_step(twin, x)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys() and all(g is not None and g.abs().sum() > 0 for g in ref_grads.values())
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-4, msg=name)
        torch.testing.assert_close(act.bn.running_var, twin.bn.running_var)


def test_the_weight_gradient_kernel_equals_autograd():
    """dweight from lslu_site_weight_grad against autograd in float64 on the plain series, both layouts, K = 3..11."""
    for case in CASES:
        n_img, c, h, w, n = case
        torch.manual_seed(sum(case))
        x, g = torch.randn(n_img, c, h, w, dtype=torch.float64), torch.randn(n_img, c, h, w, dtype=torch.float64)
        for channel in (False, True):
            shape = (n, c) if channel else (n,)
            theta, omega = torch.empty(shape).uniform_(0.5, 1.5), torch.empty(shape).uniform_(-0.5, 0.5)
            theta[0] = -theta[0]  # bounded above
            weight = torch.randn(c, 1, 2 * n + 1, 2 * n + 1, dtype=torch.float64, requires_grad=True)
            for form in (ClosedForm.of(theta, omega), None):
                series = x if form is None else series_forward(x, theta.double(), omega.double(), "relu", channel)
                (ref,) = torch.autograd.grad(F.conv2d(series, weight, padding=n, groups=c), weight, g)
                for layout in LAYOUTS.values():
                    dw = lslu_cpu.weight_grad(
                        x.float().contiguous(memory_format=layout),
                        g.float().contiguous(memory_format=layout),
                        form,
                        2 * n + 1,
                    )
                    assert dw.shape == weight.shape
                    assert_close(dw, ref)


def test_a_channel_count_that_is_not_the_weights_is_refused():
    act = randomized_lslu(channels=16).float().eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="depthwise conv has 16 channels, its input 24"):
        act(torch.randn(1, 24, 5, 5))


BUILD = textwrap.dedent("""
    import warnings, torch
    from trainables.activations.lslu import cpu_kernel as lslu_cpu
    from tests.lslu_factory import randomized_lslu
    act = randomized_lslu(channels=16).float().eval().fuse()
    x = torch.randn(1, 16, 6, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            out = act(x)
    print("built" if lslu_cpu.library() else "not built", *[str(w.message) for w in caught], sep="\\n")
    with torch.no_grad():
        import os; os.environ["LSLU_KERNEL"] = "eager"
        assert torch.allclose(out, act(x), rtol=1e-5, atol=1e-5)
""")


def test_it_is_built_once_per_cache_and_without_a_compiler_inference_keeps_the_conv(tmp_path):
    env = {**os.environ, "LSLU_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("LSLU_KERNEL", None)

    def run(env):
        return subprocess.run(
            [sys.executable, "-c", BUILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
        )

    first = run(env)
    assert first.returncode == 0 and first.stdout.splitlines()[0] == "built", first.stderr
    (built,) = (tmp_path / "cache").glob("lslu_cpu-*.so")
    stamp = built.stat().st_mtime_ns
    assert run(env).returncode == 0 and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    missing = run({**env, "CXX": str(tmp_path / "no-such-compiler"), "LSLU_CACHE_DIR": str(tmp_path / "other")})
    assert missing.returncode == 0, missing.stderr
    lines = missing.stdout.splitlines()
    assert lines[0] == "not built" and "could not be built, so PyTorch's ops serve" in lines[1]
    assert not (tmp_path / "other").exists() or not list((tmp_path / "other").glob("*.so"))
