"""LSLU against an independent numpy/scipy calculation of DESIGN.md §2's forward pass."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from scipy.special import erf

from lslu_factory import randomized_lslu
from trainables.activations import LSLU, create_act, learnable_act_state, list_acts

NP_BASES = {
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))),
}


def reference(x, theta, omega, weight, bn, base, train):
    """y = x; y = θ_i f(y) + ω_i (i = 1..n); out = BN(depthwise_conv(f(y))), computed channel by channel in float64."""
    f = NP_BASES[base]
    x = x.astype(np.float64)
    n_batch, channels, h, w = x.shape
    n = theta.shape[0]
    y = x
    for i in range(n):
        t = theta[i] if theta.ndim == 1 else theta[i][None, :, None, None]
        o = omega[i] if omega.ndim == 1 else omega[i][None, :, None, None]
        y = t * f(y) + o
    y = f(y)
    conv = np.zeros_like(y)
    for b in range(n_batch):
        for c in range(channels):
            padded = np.pad(y[b, c], n)
            conv[b, c] = correlate2d(padded, weight[c, 0], mode="valid")
    if train:
        mean = conv.mean(axis=(0, 2, 3))
        var = conv.var(axis=(0, 2, 3))  # biased, as BatchNorm normalizes with
    else:
        mean, var = bn["running_mean"], bn["running_var"]
    norm = (conv - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-6)
    return norm * bn["weight"][None, :, None, None] + bn["bias"][None, :, None, None]


def _bn_numpy(act):
    return {k: getattr(act.bn, k).detach().numpy() for k in ("weight", "bias", "running_mean", "running_var")}


@pytest.mark.parametrize("base", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_formula(base, granularity, n, train):
    act = randomized_lslu(base, granularity, n)
    act.train(train)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64) * 2
    expected = reference(
        x.numpy(),
        act.theta.detach().numpy(),
        act.omega.detach().numpy(),
        act.weight.detach().numpy(),
        _bn_numpy(act),
        base,
        train,
    )
    out = act(x).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("base", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("n", [1, 3])
def test_fuse_keeps_eval_output(base, granularity, n):
    act = randomized_lslu(base, granularity, n).float().eval()
    x = torch.randn(4, 3, 9, 9)
    before = act(x)
    act.fuse()
    after = act(x)
    assert act.fused and isinstance(act.bn, torch.nn.Identity)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def test_shapes_and_init():
    act = create_act("lslu", channels=8, n=3, granularity="channel")
    assert act.theta.shape == act.omega.shape == (3, 8)
    assert torch.all(act.theta == 1) and torch.all(act.omega == 0)
    assert act.weight.shape == (8, 1, 7, 7) and act.bn.eps == 1e-6
    assert create_act("lslu", channels=8, n=2).theta.shape == (2,)
    assert "n=3" in repr(act) and "base=relu" in repr(act) and "granularity=channel" in repr(act)
    assert act(torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)


def test_not_learnable_is_vanillanet_series_activation():
    """θ=1, ω=0 frozen: with a ReLU base the series collapses to bn(conv(relu(x))), VanillaNet's activation."""
    act = create_act("lslu", channels=4, n=3, learnable=False)
    assert not act.theta.requires_grad and not act.omega.requires_grad
    x = torch.randn(2, 4, 6, 6)
    vanilla = act.bn(torch.nn.functional.conv2d(torch.relu(x), act.weight, padding=3, groups=4))
    assert torch.allclose(act(x), vanilla)


def test_gradients_reach_theta_and_omega():
    act = randomized_lslu("silu", "channel", 3).float()
    act(torch.randn(2, 3, 5, 5)).square().sum().backward()
    assert act.theta.grad is not None and act.theta.grad.abs().sum() > 0
    assert act.omega.grad is not None and act.omega.grad.abs().sum() > 0


def test_state_dict_round_trip():
    a = randomized_lslu("gelu", "layer", 2).float()
    b = LSLU(3, n=2, base="gelu")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert {"theta", "omega", "weight", "bn.weight", "bn.running_var"} <= set(a.state_dict())


def test_learnable_state_reports_channel_means():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), LSLU(4, n=2, granularity="channel"))
    with torch.no_grad():
        model[1].theta.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 2.0]]))
    assert learnable_act_state(model) == {"1": {"theta/1": 2.5, "theta/2": 0.5, "omega/1": 0.0, "omega/2": 0.0}}


def test_unknown_names_and_arguments_fail_loudly():
    with pytest.raises(ValueError, match="valid choices: .*lslu.*relu"):
        create_act("swishy")
    with pytest.raises(ValueError, match="unknown argument.*nn.*valid arguments: n, base, granularity, learnable"):
        create_act("lslu", channels=4, nn=3)
    with pytest.raises(ValueError, match="base 'tanh'"):
        create_act("lslu", channels=4, base="tanh")
    with pytest.raises(ValueError, match="n >= 1"):
        create_act("lslu", channels=4, n=0)
    assert {"relu", "silu", "gelu", "lslu"} <= set(list_acts())
