"""PWLU, LayerAct and the baselines against independent float64 numpy calculations of their papers' formulas,
plus what every activation of the registry must do (LSLU's own formula tests are in test_lslu.py)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import expit
from test_lslu import NP_BASES

from trainables.activations import (
    LSLU,
    PWLU,
    LayerAct,
    PReLU,
    act_module_types,
    create_act,
    learnable_act_state,
    list_acts,
    realign_pending,
)
from trainables.insertion import apply_policy, list_sites
from trainables.metrics import act_metrics, parse_act_metric_key
from trainables.models import build_model

ALL_ACTS = ["gelu", "la_hardsilu", "la_silu", "leaky_relu", "lslu", "prelu", "pwlu", "relu", "silu"]


# ---- PWLU: an independent reading of papers/003 eq. 1-4, Table 1 and §4.3 ------------------------------------


def pwlu_reference(x, left, right, points, k_left, k_right):
    """Eq. 1-4 for one layer (or one channel), element by element, in float64."""
    n = len(points) - 1
    d = (right - left) / n
    out = np.empty_like(x)
    for j, v in enumerate(x.flat):
        if v < left:
            out.flat[j] = (v - left) * k_left + points[0]
        elif v >= right:
            out.flat[j] = (v - right) * k_right + points[n]
        else:
            idx = min(int(math.floor((v - left) / d)), n - 1)
            k_idx = (points[idx + 1] - points[idx]) / d
            out.flat[j] = (v - (left + idx * d)) * k_idx + points[idx]
    return out


def pwlu_table_gradients(x, g, left, right, points, k_left, k_right):
    """papers/003 Table 1 (idx held constant): dL/dB_L, dB_R, dK_L, dK_R, dY_P and dx for upstream gradient g."""
    n = len(points) - 1
    d = (right - left) / n
    grads = {"left": 0.0, "right": 0.0, "slope_left": 0.0, "slope_right": 0.0, "points": np.zeros(n + 1)}
    dx = np.empty_like(x)
    for j, (v, gj) in enumerate(zip(x.flat, g.flat)):
        if v < left:
            grads["left"] += -k_left * gj
            grads["slope_left"] += (v - left) * gj
            grads["points"][0] += gj
            dx.flat[j] = k_left * gj
        elif v >= right:
            grads["right"] += -k_right * gj
            grads["slope_right"] += (v - right) * gj
            grads["points"][n] += gj
            dx.flat[j] = k_right * gj
        else:
            idx = min(int(math.floor((v - left) / d)), n - 1)
            b_idx = left + idx * d
            k_idx = (points[idx + 1] - points[idx]) / d
            grads["left"] += k_idx * (v - right) / (right - left) * gj
            grads["right"] += k_idx * (left - v) / (right - left) * gj
            grads["points"][idx] += (b_idx + d - v) / d * gj
            grads["points"][idx + 1] += (v - b_idx) / d * gj
            dx.flat[j] = k_idx * gj
    return grads, dx


def _learned_pwlu(granularity, intervals=6, channels=3, seed=0):
    """A phase-II PWLU in float64 whose shape is far from ReLU, so every term of eq. 1 matters."""
    torch.manual_seed(seed)
    act = create_act("pwlu", channels=channels, intervals=intervals, granularity=granularity).double()
    act.train()
    act(torch.randn(8, channels, 4, 4, dtype=torch.float64))  # one phase-I batch, so realign() has statistics
    act.realign()
    with torch.no_grad():
        act.left.copy_(-1.0 - torch.rand_like(act.left))
        act.right.copy_(1.0 + torch.rand_like(act.right))
        act.points.normal_(0, 1)
        act.slope_left.uniform_(-1, 1)
        act.slope_right.uniform_(0, 2)
    return act


def _channel_params(act, c):
    """(left, right, points, K_L, K_R) of channel c (or of the layer) as numpy float64."""
    pick = (lambda p: p[c]) if act.granularity == "channel" else (lambda p: p)
    return tuple(pick(p.detach()).numpy() for p in (act.left, act.right, act.points, act.slope_left, act.slope_right))


def _probe_inputs(act, channels=3):
    """Random inputs plus, per channel: every grid point exactly, both boundaries, and points far outside."""
    torch.manual_seed(1)
    x = torch.randn(2, channels, 40, dtype=torch.float64) * 3
    for c in range(channels):
        left, right, points = _channel_params(act, c)[:3]
        grid = left + np.arange(len(points)) * (right - left) / (len(points) - 1)
        special = np.concatenate([grid, [left - 10.0, right + 10.0, left - 1e-9, right - 1e-9]])
        x[0, c, : len(special)] = torch.from_numpy(special)
    return x


def _per_channel_reference(act, x):
    out = np.empty_like(x.numpy())
    for c in range(x.shape[1]):
        out[:, c] = pwlu_reference(x[:, c].numpy(), *_channel_params(act, c))
    return out


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_pwlu_training_form_matches_eq_1_to_4(granularity):
    act = _learned_pwlu(granularity)
    x = _probe_inputs(act)
    np.testing.assert_allclose(act.train()(x).detach().numpy(), _per_channel_reference(act, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_pwlu_inference_form_agrees_with_training_form(granularity):
    """§4.3's x·S[idx'] + O[idx'] (eval mode) against eq. 1, including grid points, boundaries and far outside."""
    act = _learned_pwlu(granularity)
    x = _probe_inputs(act)
    with torch.no_grad():
        train_out, eval_out = act.train()(x), act.eval()(x)
    np.testing.assert_allclose(eval_out.numpy(), train_out.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(eval_out.numpy(), _per_channel_reference(act, x), rtol=1e-10, atol=1e-10)
    slopes, offsets = act.inference_tables()
    assert slopes.shape[-1] == offsets.shape[-1] == act.intervals + 2  # idx' = -1 ... N


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_pwlu_gradients_are_the_papers_table(granularity):
    act = _learned_pwlu(granularity)
    x = _probe_inputs(act).requires_grad_(True)
    g = torch.randn_like(x)
    (act.train()(x) * g).sum().backward()
    for c in range(x.shape[1]):
        expected, dx = pwlu_table_gradients(x[:, c].detach().numpy(), g[:, c].numpy(), *_channel_params(act, c))
        np.testing.assert_allclose(x.grad[:, c].numpy(), dx, rtol=1e-10, atol=1e-10)
        if granularity == "layer":
            continue  # a layer's parameters collect gradient from every channel: checked below
        for name, value in expected.items():
            np.testing.assert_allclose(getattr(act, name).grad[c].numpy(), value, rtol=1e-9, atol=1e-9, err_msg=name)
    if granularity == "layer":
        flat_x, flat_g = x.detach().numpy().ravel(), g.numpy().ravel()
        expected, _ = pwlu_table_gradients(flat_x, flat_g, *_channel_params(act, 0))
        for name, value in expected.items():
            np.testing.assert_allclose(getattr(act, name).grad.numpy(), value, rtol=1e-9, atol=1e-9, err_msg=name)


def _feed(act, batches):
    act.train()
    for batch in batches:
        act(batch)


def _ema(values):
    """Eq. 5 with the running value starting at the first batch's."""
    run = values[0]
    for v in values[1:]:
        run = 0.9 * run + 0.1 * v
    return run


def test_pwlu_phase_one_is_relu_and_collects_eq5_statistics():
    mu, sigma = 1.5, 2.0
    gen = torch.Generator().manual_seed(0)
    batches = [mu + sigma * torch.randn(64, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(60)]
    act = create_act("pwlu").double()
    _feed(act, batches)
    means = [b.numpy().mean() for b in batches]
    stds = [b.numpy().std(ddof=1) for b in batches]
    assert act.running_mean.item() == pytest.approx(_ema(means), rel=1e-12)
    assert act.running_std.item() == pytest.approx(_ema(stds), rel=1e-12)
    assert int(act.stats_batches) == 60 and int(act.phase) == 1 and not act.realigned
    assert act.running_mean.item() == pytest.approx(mu, abs=0.03)
    assert act.running_std.item() == pytest.approx(sigma, abs=0.03)
    x = batches[0]
    assert torch.equal(act.train()(x), torch.relu(x)) and torch.equal(act.eval()(x), torch.relu(x))
    assert int(act.stats_batches) == 61  # the training-mode call counted, the eval one did not


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_pwlu_realignment_recovers_the_input_distribution(granularity):
    """Inputs N(μ_c, σ_c²) per channel: realign() puts B_L, B_R at μ ± 3σ and the unit is still ReLU."""
    mus, sigmas = torch.tensor([0.5, -0.3, 1.0]), torch.tensor([1.0, 2.0, 0.5])
    gen = torch.Generator().manual_seed(2)
    batches = [
        (mus.view(1, 3, 1, 1) + sigmas.view(1, 3, 1, 1) * torch.randn(128, 3, 6, 6, generator=gen)).double()
        for _ in range(50)
    ]
    act = create_act("pwlu", channels=3, granularity=granularity, intervals=16).double()
    _feed(act, batches)
    assert realign_pending(torch.nn.Sequential(act)) == ["0"] and act.realigned and int(act.phase) == 2
    assert realign_pending(torch.nn.Sequential(act)) == []  # idempotent: a learned unit is never reset
    if granularity == "channel":
        per_channel = [b.numpy().transpose(1, 0, 2, 3).reshape(3, -1) for b in batches]
        mu = np.array([_ema([p[c].mean() for p in per_channel]) for c in range(3)])
        sd = np.array([_ema([p[c].std(ddof=1) for p in per_channel]) for c in range(3)])
        np.testing.assert_allclose(mu, mus.numpy(), atol=0.03)
        np.testing.assert_allclose(sd, sigmas.numpy(), atol=0.03)
    else:
        mu = _ema([b.numpy().mean() for b in batches])
        sd = _ema([b.numpy().std(ddof=1) for b in batches])
        pooled = torch.cat(batches)
        assert mu == pytest.approx(pooled.mean().item(), abs=0.02)
        assert sd == pytest.approx(pooled.std().item(), abs=0.02)
    np.testing.assert_allclose(act.left.detach().numpy(), mu - 3 * sd, rtol=1e-12)
    np.testing.assert_allclose(act.right.detach().numpy(), mu + 3 * sd, rtol=1e-12)
    assert torch.all(act.slope_left == 0) and torch.all(act.slope_right == 1)
    d = (act.right - act.left).detach() / 16
    grid = act.left.detach().unsqueeze(-1) + torch.arange(17, dtype=torch.float64) * d.unsqueeze(-1)
    assert torch.allclose(act.points.detach(), torch.relu(grid), rtol=0, atol=1e-12)
    # still ReLU, up to the paper's tiny gap inside the one interval that holds 0 (at most d/4 there)
    x = torch.linspace(-12, 12, 20001, dtype=torch.float64).view(1, 1, -1).expand(1, 3, -1).contiguous()
    d_b = d.view(1, -1, 1) if granularity == "channel" else d
    for mode in (act.train, act.eval):
        mode()
        with torch.no_grad():
            gap = (act(x) - torch.relu(x)).abs()
        assert torch.all(gap <= d_b / 4 + 1e-12)
        assert torch.all(gap[x.abs() >= d_b] <= 1e-12)


def test_pwlu_realign_without_statistics_fails():
    with pytest.raises(RuntimeError, match="no training batch"):
        create_act("pwlu").realign()


def test_pwlu_state_dict_round_trips_phase_and_statistics():
    learned = _learned_pwlu("channel")
    fresh = create_act("pwlu", channels=3, intervals=6, granularity="channel").double()
    assert not fresh.realigned
    fresh.load_state_dict(learned.state_dict())
    assert fresh.realigned and int(fresh.phase) == 2 and int(fresh.stats_batches) == 1
    x = _probe_inputs(learned)
    for mode in ("train", "eval"):
        assert torch.equal(getattr(fresh, mode)()(x), getattr(learned, mode)()(x))
    collecting = create_act("pwlu", channels=3, intervals=6, granularity="channel")
    collecting.train()(torch.randn(4, 3, 5, 5) + 2)
    other = create_act("pwlu", channels=3, intervals=6, granularity="channel")
    other.load_state_dict(collecting.state_dict())
    assert not other.realigned and torch.equal(other.running_mean, collecting.running_mean)
    assert {
        "left",
        "right",
        "points",
        "slope_left",
        "slope_right",
        "running_mean",
        "running_std",
        "stats_batches",
        "phase",
    } == set(other.state_dict())


def test_pwlu_gets_no_gradient_in_phase_one_and_one_in_phase_two():
    act = create_act("pwlu", channels=3, granularity="channel")
    # as inside a network: the graph exists, PWLU's parameters are not in it
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    act.train()(x).square().sum().backward()
    assert all(p.grad is None for p in act.parameters()) and x.grad is not None
    act.realign()
    # 4x: some inputs beyond [B_L, B_R], so K_L and K_R get gradient
    (act(4 * x) * torch.randn_like(x)).sum().backward()
    for name, p in act.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- LayerAct: papers/004 eq. 6 and its backward pass -------------------------------------------------------


def layeract_reference(y, alpha, scale):
    """a = y·s(n), n = (y − μ)/sqrt(σ² + α), μ and σ² (biased, 1/d) over each sample's C·H·W elements."""
    flat = y.reshape(len(y), -1)
    mu = flat.mean(axis=1).reshape(-1, *[1] * (y.ndim - 1))
    var = flat.var(axis=1).reshape(mu.shape)  # numpy's default ddof=0: the paper's σ_y
    n = (y - mu) / np.sqrt(var + alpha)
    if scale == "sigmoid":
        return y * expit(n)
    return np.where(n >= 3, y, np.where(n < -3, 0.0, y * (n / 6 + 0.5)))  # the paper's LA-HardSiLU cases


@pytest.mark.parametrize("name, scale", [("la_silu", "sigmoid"), ("la_hardsilu", "hardsigmoid")])
@pytest.mark.parametrize("alpha", [1e-5, 0.1])
def test_layeract_matches_eq_6(name, scale, alpha):
    torch.manual_seed(0)
    y = torch.randn(4, 3, 5, 6, dtype=torch.float64) * torch.tensor([0.5, 1.0, 3.0, 6.0], dtype=torch.float64).view(
        4, 1, 1, 1
    )
    y = y + torch.tensor([-2.0, 0.0, 1.0, 4.0], dtype=torch.float64).view(4, 1, 1, 1)  # every sample its own μ, σ
    act = create_act(name, channels=3, alpha=alpha)
    expected = layeract_reference(y.numpy(), alpha, scale)
    for mode in (act.train, act.eval):
        np.testing.assert_allclose(mode()(y).numpy(), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(act, LayerAct) and f"alpha={alpha:g}" in repr(act)


def test_la_silu_gradient_is_the_papers_backward_pass():
    """papers/004's ∂L/∂y_i, which goes through μ and σ² (biased: ∂σ²/∂y_i = 2(y_i − μ)/d)."""
    torch.manual_seed(3)
    alpha = 1e-2
    y = (torch.randn(3, 2, 4, 4, dtype=torch.float64) + 0.5).requires_grad_(True)
    g = torch.randn_like(y)
    (create_act("la_silu", alpha=alpha)(y) * g).sum().backward()
    yn, gn = y.detach().numpy().reshape(3, -1), g.numpy().reshape(3, -1)
    d = yn.shape[1]
    mu, var = yn.mean(axis=1, keepdims=True), yn.var(axis=1, keepdims=True)
    root = np.sqrt(var + alpha)
    n = (yn - mu) / root
    s = expit(n)
    ds = s * (1 - s)
    dmu = (gn * ds * -yn / root).sum(axis=1, keepdims=True)
    dvar = (gn * ds * -yn * n / (2 * (var + alpha))).sum(axis=1, keepdims=True)
    dy = gn * s + gn * ds * yn / root + dmu / d + 2 * (yn - mu) / d * dvar
    np.testing.assert_allclose(y.grad.numpy().reshape(3, -1), dy, rtol=1e-10, atol=1e-12)


# ---- baselines -----------------------------------------------------------------------------------------------


def test_fixed_baselines_match_their_formulas():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 3
    for name in ("relu", "silu", "gelu"):
        np.testing.assert_allclose(create_act(name)(x).numpy(), NP_BASES[name](x.numpy()), rtol=1e-12, atol=1e-12)
    for kwargs, slope in (({}, 0.01), ({"negative_slope": 0.2}, 0.2)):
        expected = np.where(x.numpy() >= 0, x.numpy(), slope * x.numpy())
        np.testing.assert_allclose(create_act("leaky_relu", **kwargs)(x).numpy(), expected, rtol=1e-12)


def test_prelu_has_one_slope_per_channel_when_channels_are_given():
    per_channel, single = create_act("prelu", channels=4), create_act("prelu")
    assert isinstance(per_channel, PReLU) and per_channel.weight.shape == (4,) and single.weight.shape == (1,)
    assert torch.all(per_channel.weight == 0.25)
    with torch.no_grad():
        per_channel.weight.copy_(torch.tensor([0.1, -0.5, 2.0, 0.0]))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    slopes = per_channel.weight.detach().double().numpy().reshape(1, 4, 1, 1)
    expected = np.where(x.numpy() >= 0, x.numpy(), slopes * x.numpy())
    np.testing.assert_allclose(per_channel.double()(x).detach().numpy(), expected, rtol=1e-12)
    per_channel(x).sum().backward()
    assert per_channel.weight.grad.abs().sum() > 0


# ---- the registry --------------------------------------------------------------------------------------------


def test_list_acts_names_every_family():
    assert list_acts() == ALL_ACTS


@pytest.mark.parametrize("name", ALL_ACTS)
def test_every_activation_takes_channels_and_inplace(name):
    for channels in (None, 4) if name != "lslu" else (4,):
        act = create_act(name, channels=channels, inplace=True)
        assert isinstance(act, act_module_types())
        x = torch.randn(2, 4, 6, 6)
        assert act.train()(x.clone()).shape == x.shape and act.eval()(x.clone()).shape == x.shape


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        (
            "swish9",
            {},
            r"unknown activation 'swish9'; valid choices: "
            r"gelu, la_hardsilu, la_silu, leaky_relu, lslu, prelu, pwlu, relu, silu",
        ),
        ("pwlu", {"n": 3}, r"'pwlu' got unknown argument\(s\) n; valid arguments: intervals, granularity"),
        ("la_silu", {"eps": 1e-5}, r"valid arguments: alpha"),
        ("prelu", {"slope": 0.1}, r"valid arguments: init"),
        ("leaky_relu", {"slope": 0.1}, r"valid arguments: negative_slope"),
        ("relu", {"n": 1}, r"valid arguments: none besides channels and inplace"),
        ("pwlu", {"intervals": 0}, r"intervals >= 1"),
        ("pwlu", {"granularity": "pixel"}, r"granularity 'pixel' is not one of layer, channel"),
        ("pwlu", {"granularity": "channel"}, r"needs channels >= 1"),
        ("la_hardsilu", {"alpha": 0.0}, r"alpha must be a number > 0"),
        ("leaky_relu", {"negative_slope": "steep"}, r"negative_slope must be a number"),
    ],
)
def test_unknown_names_and_bad_arguments_fail(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_act(name, **kwargs)


@pytest.mark.parametrize("name", ALL_ACTS)
def test_a_replaced_site_stays_a_site(name):
    model = build_model("digits_cnn", num_classes=10)
    paths = [s.path for s in list_sites(model)]
    assert apply_policy(model, "all", name) == paths
    assert [s.path for s in list_sites(model)] == paths
    assert apply_policy(model, "mask:0110", "relu") == paths[1:3]  # and can be replaced again
    assert [s.path for s in list_sites(model)] == paths


def test_learnable_state_reports_lslu_theta_omega_and_pwlu_boundaries():
    model = torch.nn.Sequential(
        LSLU(4, n=2),
        create_act("pwlu", channels=4, granularity="channel"),
        create_act("pwlu"),
        create_act("la_silu"),
        create_act("prelu", channels=4),
    )
    with torch.no_grad():
        model[1].left.copy_(torch.tensor([-1.0, -2.0, -3.0, -6.0]))
        model[1].right.copy_(torch.tensor([1.0, 2.0, 3.0, 2.0]))
    state = learnable_act_state(model)
    assert state == {
        "0": {"theta/1": 1.0, "theta/2": 1.0, "omega/1": 0.0, "omega/2": 0.0},
        "1": {"pwlu_left": -3.0, "pwlu_right": 2.0},
        "2": {"pwlu_left": -3.0, "pwlu_right": 3.0},
    }
    metrics = act_metrics(state)
    assert metrics["pwlu_left/1"] == -3.0 and metrics["pwlu_right/2"] == 3.0 and metrics["theta/0/2"] == 1.0
    assert len(metrics) == 4 + 4
    assert parse_act_metric_key("pwlu_right/layer1.0.act") == ("layer1.0.act", "pwlu_right")
    assert parse_act_metric_key("pwlu_left/") is None


def test_activation_parameters_are_exempt_from_weight_decay():
    from trainables.recipe import param_groups

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        LSLU(4, n=2, granularity="channel"),
        create_act("pwlu", channels=4, granularity="channel"),
        create_act("prelu", channels=4),
    )
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {"0.weight", "1.weight"}  # conv kernels, LSLU's depthwise kernel
    assert {"1.theta", "1.omega", "2.points", "2.left", "2.right", "2.slope_left", "2.slope_right", "3.weight"} <= {
        names[id(p)] for p in no_decay["params"]
    }


@pytest.mark.parametrize("name", ALL_ACTS)
def test_every_state_dict_round_trips(name):
    """A trained-looking module (parameters and buffers moved off their initial values) reloads into a fresh one."""
    torch.manual_seed(0)
    kwargs = {"granularity": "channel"} if name in ("lslu", "pwlu") else {}
    trained = create_act(name, channels=4, **kwargs)
    x = torch.randn(2, 4, 6, 6)
    trained.train()(x.clone() * 2 + 1)  # PWLU statistics, LSLU's BatchNorm running statistics
    if isinstance(trained, PWLU):
        trained.realign()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fresh = create_act(name, channels=4, **kwargs)
    fresh.load_state_dict(trained.state_dict())
    for mode in ("train", "eval"):
        assert torch.equal(getattr(fresh, mode)()(x.clone()), getattr(trained, mode)()(x.clone())), mode
