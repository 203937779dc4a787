"""The closed form of LSLU's ReLU series (clamp(A x + B, lo, hi)) and the one-function training site built on it,
against the series step by step and the site's modules, and what each keeps for backward."""

import copy

import pytest
import torch

from lslu_factory import randomized_lslu
from trainables.activations import LSLU
from trainables.activations.lslu import dispatch
from trainables.activations.lslu.closed_form import relu_series
from trainables.activations.lslu.reference import series_forward


def _params(n, channels, channel, low, high, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (n, channels) if channel else (n,)
    theta = (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).requires_grad_()
    omega = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    x = (torch.randn(4, channels, 5, 6, generator=g, dtype=torch.float64) * 2).requires_grad_()
    return x, theta, omega, torch.randn(x.shape, generator=g, dtype=torch.float64)


def _value_and_grads(fn, x, theta, omega, g):
    out = fn(x, theta, omega)
    return (out, *torch.autograd.grad(out, (x, theta, omega), g))


@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_closed_form_is_the_series_with_its_gradients(channel, n):
    """θ of either sign (negative θ swaps the bounds, so some channels get a finite upper bound), many draws."""
    for seed in range(12):
        x, theta, omega, g = _params(n, 3, channel, -1.5, 1.5, seed)
        want = _value_and_grads(lambda *a: series_forward(*a, "relu", channel), x, theta, omega, g)
        got = _value_and_grads(relu_series, x, theta, omega, g)
        for name, w, o in zip(("out", "dx", "dtheta", "domega"), want, got):
            assert o.shape == w.shape and o.dtype == w.dtype
            torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10, msg=f"{name}, seed {seed}")


@pytest.mark.parametrize("channel", [False, True])
def test_closed_form_passes_a_finite_difference_check(channel):
    x, theta, omega, _ = _params(2, 2, channel, -1.5, 1.5, seed=3)
    assert torch.autograd.gradcheck(relu_series, (x[:1, :, :3, :3].detach().requires_grad_(), theta, omega))


@pytest.mark.parametrize("theta0", [1.0, -1.0])
def test_ties_at_the_initial_values_follow_relus_convention(theta0):
    """θ = ±1, ω = 0 (the init) and inputs exactly 0: elements on a bound count as clipped, as relu'(0) = 0 has it."""
    x, _, _, g = _params(3, 3, False, 1, 1, seed=0)
    x = x.detach().masked_fill(x.detach().abs() < 0.7, 0).requires_grad_()
    theta = torch.full((3,), theta0, dtype=torch.float64, requires_grad=True)
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    want = _value_and_grads(lambda *a: series_forward(*a, "relu", False), x, theta, omega, g)
    got = _value_and_grads(relu_series, x, theta, omega, g)
    for w, o in zip(want, got):
        assert torch.equal(o, w)


def test_a_theta_of_zero_keeps_the_plain_series():
    """θ_i = 0 makes the output constant but dθ_i depends on x: the closed form declines and LSLU runs the series."""
    x, theta, omega, g = _params(3, 3, False, 0.5, 1.5, seed=1)
    with torch.no_grad():
        theta[1] = 0
        omega[1:] = 0.25  # y_2 = ω_2 > 0 and y_3 > 0, so dθ_2 = Σ g θ_3 relu(y_1) is not 0
    assert relu_series(x, theta, omega) is None
    act = LSLU(3, n=3).double()
    with torch.no_grad():
        act.theta.copy_(theta)
        act.omega.copy_(omega)
    want = _value_and_grads(lambda *a: series_forward(*a, "relu", False), x, theta, omega, g)
    got = _value_and_grads(lambda x, t, o: act.series(x), x, act.theta, act.omega, g)
    for w, o in zip(want, got):
        torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)
    assert got[2][1].abs() > 0


def test_backward_keeps_only_the_input():
    """A ReLU site keeps one tensor of x's size; the plain series keeps n + 1."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    theta, omega = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        relu_series(x, theta, omega)
    assert [t.shape for t in kept if t.numel() > 3] == [x.shape]
    assert any(t is x for t in kept)


def test_eval_output_follows_theta_and_omega_updates():
    """Without a gradient the coefficients are kept per module; an in-place update (optimizer step, load_state_dict)
    must not serve stale ones."""
    act = LSLU(3, n=2, granularity="channel").eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        first = act.series(x)
        assert torch.equal(first, act.series(x))
        act.theta.mul_(-0.5)
        act.omega.add_(0.25)
        after = act.series(x)
        want = series_forward(x, act.theta, act.omega, "relu", True)
    torch.testing.assert_close(after, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(after, first)
    other = LSLU(3, n=2, granularity="channel").eval()
    other.load_state_dict(act.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.series(x), want, rtol=1e-6, atol=1e-6)
        act.theta.fill_(1)
        act.omega.fill_(0)
        torch.testing.assert_close(act.series(x), torch.relu(x))


def _site_pair(granularity, n, momentum, seed=0):
    """Two equal LSLU sites in training mode, θ of both signs: one runs as ``lslu_site`` (the CPU default), the other
    as modules (``lslu_site.serves`` patched off for it)."""
    act = randomized_lslu("relu", granularity, n, channels=4, seed=seed, theta=(-1.5, 1.5))
    act.bn.momentum = momentum
    return act, copy.deepcopy(act)


def _as_modules(act, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(dispatch, "cpu_site_applies", lambda *args: False)
        return act(x)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_site_function_is_the_modules(granularity, n, momentum, fmt, monkeypatch):
    """Output, every gradient, BatchNorm's running statistics and batch count: equal over two training steps, in
    either layout (n=1: a 3×3 kernel, PyTorch's own depthwise backward; n=3: the two-convolution one)."""
    site, modules = _site_pair(granularity, n, momentum)
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    for step in range(2):
        g = torch.randn(x.shape, dtype=torch.float64)
        out, ref = site(x), _as_modules(modules, x, monkeypatch)
        assert out.grad_fn.name() == "_SiteBackward" and ref.grad_fn.name() != "_SiteBackward"
        got = torch.autograd.grad(out, [x, *site.parameters()], g)
        want = torch.autograd.grad(ref, [x, *modules.parameters()], g)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        for (name, _), o, w in zip([("x", None), *site.named_parameters()], got, want):
            torch.testing.assert_close(o, w, rtol=1e-10, atol=1e-10, msg=f"d{name}, step {step}")
        for (name, o), w in zip(site.named_buffers(), modules.buffers()):
            torch.testing.assert_close(o, w, rtol=1e-12, atol=0, msg=f"{name}, step {step}")
    assert site.bn.num_batches_tracked.item() == 2


def test_site_function_keeps_only_its_input_and_output():
    """Besides parameters and per-channel statistics: x, and the output the next layer keeps for its own backward."""
    act = LSLU(8, n=3).train()
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = act(x)
    big = [t for t in kept if t.numel() == x.numel()]
    assert len(big) == 2 and any(t is x for t in big) and any(t is out for t in big)


@pytest.mark.parametrize("case", ["gamma_below_floor", "eval", "silu", "theta_zero", "no_grad"])
def test_site_function_steps_aside_where_it_does_not_serve(case):
    act = LSLU(4, n=2, base="silu" if case == "silu" else "relu").train()
    with torch.no_grad():
        if case == "gamma_below_floor":
            act.bn.weight[2] = dispatch.GAMMA_FLOOR / 2  # (out − β) / γ would lose the conv's output
        if case == "theta_zero":
            act.theta[0] = 0
    act.train(case != "eval")
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    with torch.set_grad_enabled(case != "no_grad"):
        out = act(x)
    assert out.grad_fn is None or out.grad_fn.name() != "_SiteBackward"


def test_site_output_changed_in_place_is_refused():
    """The conv's output comes back from the site's output: a later in-place change must fail loudly, not mislead."""
    act = LSLU(4, n=1).train()
    out = act(torch.randn(2, 4, 5, 5, requires_grad=True))
    out.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
