"""The model zoo and the insertion engine on real networks (DESIGN.md §3, §7)."""

import pytest
import torch
from torch import nn

from orchestrator.cli import main
from trainables.activations import LSLU, create_act
from trainables.insertion import apply_policy, list_sites, select_sites
from trainables.models import build_model, list_models
from trainables.models.stats import count_macs, fuse_model, model_stats
from trainables.models.vanillanet import DeepTrainAct, VanillaAct

NATIVE = {"efficientnetv2_rw_s": 288, "tf_efficientnetv2_s": 300}  # timm's default input sizes; 224 for the rest
ZOO = [m for m in list_models() if m != "digits_cnn"]


def _small(name, **kw):
    """VanillaNet at a quarter width (the authors' x0_25) keeps CPU tests quick; the others as published."""
    return (
        build_model(name, num_classes=10, width=0.25, **kw)
        if name.startswith("vanillanet")
        else build_model(name, num_classes=10, **kw)
    )


def _train_step(model, size, batch=2):
    model.train()
    x = torch.randn(batch, 3, size, size)
    out = model(x)
    assert out.shape == (batch, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ZOO)
def test_builds_and_trains_at_32_with_cifar_stem(name):
    _train_step(_small(name, cifar_stem=True), 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_builds_and_trains_at_native_size(name):
    _train_step(_small(name), NATIVE.get(name, 224))


@pytest.mark.parametrize(
    "name, params_m",
    [
        ("resnet18", 11.69),
        ("resnet34", 21.80),
        ("resnet50", 25.56),
        ("resnet101", 44.55),
        ("shufflenet_v2_x1_0", 2.28),
        ("vanillanet_5", 15.52),
        ("vanillanet_6", 32.51),
    ],
)
def test_published_parameter_counts_of_the_deploy_form(name, params_m):
    with torch.device("meta"):  # counts need shapes only
        model = build_model(name, num_classes=1000)
        if name.startswith("vanillanet"):
            model.set_act_learn(1.0)
        deploy = fuse_model(model)
    assert sum(p.numel() for p in deploy.parameters()) / 1e6 == pytest.approx(params_m, abs=0.005)


@pytest.mark.parametrize("name, gmacs", [("resnet18", 1.82), ("vanillanet_5", 5.16), ("vanillanet_6", 5.99)])
def test_published_multiply_accumulates(name, gmacs):
    with torch.device("meta"):
        model = build_model(name, num_classes=1000)
        if name.startswith("vanillanet"):
            model.set_act_learn(1.0)
        # the papers round: ResNet-18's 1.82 is torch's 3.63 G FLOPs / 2 = 1.814 (DESIGN.md §7)
        assert count_macs(fuse_model(model), (3, 224, 224)) == pytest.approx(gmacs, abs=0.01)


def test_model_stats_on_a_real_model():
    stats = model_stats(build_model("resnet18", num_classes=10, cifar_stem=True), (3, 32, 32), runs=2)
    assert stats["params_m"] == pytest.approx(11.17, abs=0.01)  # 10 classes and a 3×3 stem
    assert stats["flops_g"] == pytest.approx(0.556, abs=0.001)  # CIFAR ResNet-18: 0.56 G MACs
    assert stats["latency_ms"] > 0


@pytest.mark.parametrize("kernel", ["triton", "eager"])
def test_multiply_accumulates_count_lslu_depthwise_convolutions(kernel, monkeypatch):
    """Whichever kernel serves the deploy form (on the CPU by default a compiled one the counter cannot see), each
    LSLU site adds its depthwise conv: C·H·W·(2n+1)² MACs at the site's input size, counted here from hooks."""
    monkeypatch.setenv("LSLU_KERNEL", kernel)
    size, n = (3, 32, 32), 3
    plain = build_model("resnet18", num_classes=10, cifar_stem=True).eval()
    model = build_model("resnet18", num_classes=10, cifar_stem=True)
    apply_policy(model, "all", act="lslu", n=n)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].shape))
        for m in model.modules()
        if isinstance(m, LSLU)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *size))
    for hook in hooks:
        hook.remove()
    assert len(shapes) == 17
    depthwise = sum(c * h * w * (2 * n + 1) ** 2 for _, c, h, w in shapes) / 1e9
    assert count_macs(fuse_model(model), size) == pytest.approx(
        count_macs(fuse_model(plain), size) + depthwise, rel=1e-9
    )


def test_architecture_stats_measure_each_architecture_once(monkeypatch):
    from trainables.models import stats as stats_module

    measured = []
    monkeypatch.setattr(
        stats_module, "model_stats", lambda model, size: measured.append(repr(model)) or {"latency_ms": len(measured)}
    )
    monkeypatch.setattr(stats_module, "_BY_ARCHITECTURE", {})

    def lslu_net(n, lr_seed=0):
        torch.manual_seed(lr_seed)
        model = build_model("digits_cnn", num_classes=10)
        apply_policy(model, "all", "lslu", n=n)
        return model

    first = stats_module.architecture_stats(lslu_net(1), (3, 8, 8))
    again = stats_module.architecture_stats(lslu_net(1, lr_seed=1), (3, 8, 8))  # other weights, same network
    other_n = stats_module.architecture_stats(lslu_net(3), (3, 8, 8))
    other_size = stats_module.architecture_stats(lslu_net(1), (3, 16, 16))
    assert len(measured) == 3 and first == again == {"latency_ms": 1}
    assert other_n == {"latency_ms": 2} and other_size == {"latency_ms": 3}


# ResNet-18: stem act1, then two BasicBlocks (act1, act2) in each of layer1..4 = 17 sites.
R18 = ["act1"] + [f"layer{s}.{b}.act{a}" for s in range(1, 5) for b in range(2) for a in (1, 2)]


@pytest.mark.parametrize(
    "policy, indices",
    [
        ("none", []),
        ("all", list(range(17))),
        ("downsampling", [0, 6, 10, 14]),  # the stem and the last site of layer2.0, layer3.0, layer4.0
        ("stages:0", [0]),
        ("stages:1,3", [1, 2, 3, 4, 9, 10, 11, 12]),
        ("first_k:3", [0, 1, 2]),
        ("last_k:2", [15, 16]),
        ("mask:10000000000000001", [0, 16]),
        ("paths:layer4.*", [13, 14, 15, 16]),
        ("paths:*.act1,act1", [0, 1, 3, 5, 7, 9, 11, 13, 15]),
    ],
)
def test_policies_select_the_right_sites_on_resnet18(policy, indices):
    model = build_model("resnet18", num_classes=10, cifar_stem=True)
    sites = list_sites(model)
    assert [s.path for s in sites] == R18
    assert [s.stage for s in sites] == [0] + [s for s in range(1, 5) for _ in range(4)]
    replaced = apply_policy(model, policy, "lslu", n=1)
    assert replaced == [R18[i] for i in indices]
    for i, path in enumerate(R18):
        assert isinstance(model.get_submodule(path), LSLU) == (i in indices)
    _train_step(model, 16)


def test_policy_errors_state_what_is_wrong():
    sites = list_sites(build_model("resnet18", num_classes=10))
    with pytest.raises(ValueError, match="has 4 bits but the model has 17 activation sites"):
        select_sites(sites, "mask:0101")
    with pytest.raises(ValueError, match=r"names stage\(s\) \[7\]; this model's stages are \[0, 1, 2, 3, 4\]"):
        select_sites(sites, "stages:1,7")


@pytest.mark.parametrize("name", ZOO + ["digits_cnn"])
def test_site_channels_and_order_agree_with_the_tensors_through_them(name):
    model = _small(name, cifar_stem=True).eval()
    sites = list_sites(model)
    seen, order = {}, []
    for s in sites:

        def hook(module, inputs, output, path=s.path):
            seen[path] = output.shape[1]
            order.append(path)

        model.get_submodule(s.path).register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert order == [s.path for s in sites]  # forward order, each site once
    assert {s.path: s.channels for s in sites} == seen
    assert not any(".se." in s.path for s in sites)  # squeeze-excitation gates are not sites
    assert any(s.downsampling for s in sites) and sites[0].stage == 0


def test_se_gates_are_excluded_but_everything_else_counts():
    for name, total in (("mobilenetv3_large_100", 32), ("efficientnetv2_rw_s", 72)):
        model = build_model(name, num_classes=10)
        every_act = [n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.SiLU, nn.Hardswish))]
        in_se = [n for n in every_act if ".se." in n]
        assert len(in_se) > 0 and len(list_sites(model)) == len(every_act) - len(in_se) == total


def test_act_replaces_the_native_activation_everywhere():
    model = build_model("mobilenetv3_large_100", num_classes=10, act="gelu")
    assert all(isinstance(model.get_submodule(s.path), nn.GELU) for s in list_sites(model))
    native = build_model("mobilenetv3_large_100", num_classes=10)
    assert {type(native.get_submodule(s.path)) for s in list_sites(native)} == {nn.ReLU, nn.Hardswish}


def test_dropout_goes_into_the_head():
    assert build_model("resnet18", num_classes=10, dropout=0.3).drop_rate == 0.3
    assert build_model("shufflenet_v2_x1_0", num_classes=10, dropout=0.3).fc[0].p == 0.3
    assert build_model("vanillanet_5", num_classes=10, width=0.25, dropout=0.3).cls1[1].p == 0.3


def test_unknown_models_and_arguments_fail_loudly():
    with pytest.raises(ValueError, match="unknown model 'resnet9'; valid choices: digits_cnn, .*resnet18"):
        build_model("resnet9", num_classes=10)
    with pytest.raises(ValueError, match="no width multiplier"):
        build_model("resnet18", num_classes=10, width=0.5)
    with pytest.raises(ValueError, match="unknown argument.*act_num"):
        build_model("resnet18", num_classes=10, act_num=3)


# VanillaNet


def _vanilla_with_stats(depth=5, seed=0):
    """A quarter-width VanillaNet whose BatchNorms hold non-trivial running statistics."""
    torch.manual_seed(seed)
    model = build_model(f"vanillanet_{depth}", num_classes=10, width=0.25)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


@pytest.mark.parametrize("depth", [5, 7])
def test_vanillanet_fuse_keeps_outputs_after_deep_training(depth):
    model = _vanilla_with_stats(depth)
    model.set_act_learn(1.0)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    model.fuse()
    assert model.fused and not any(isinstance(m, (DeepTrainAct, nn.BatchNorm2d)) for m in model.modules())
    after = model(x)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())


def test_vanillanet_fuse_is_refused_during_deep_training():
    model = _vanilla_with_stats()
    model.set_act_learn(0.5)
    with pytest.raises(ValueError, match=r"act_learn = 1 everywhere\), got act_learn \[0.5\]"):
        model.fuse()


def test_deep_training_lambda_is_the_leaky_slope_and_survives_a_checkpoint():
    model = _vanilla_with_stats()
    model.set_act_learn(0.25)
    x = torch.tensor([[-4.0, 2.0]]).view(1, 2, 1, 1)
    assert torch.equal(model.stem_act(x).flatten(), torch.tensor([-1.0, 2.0]))  # (1-λ)relu(x) + λx
    restored = build_model("vanillanet_5", num_classes=10, width=0.25)
    restored.load_state_dict(model.state_dict())
    assert {m.act_learn for m in restored.modules() if isinstance(m, DeepTrainAct)} == {0.25}


def test_vanillanet_activation_is_lslu_with_theta_omega_frozen():
    torch.manual_seed(0)
    vanilla = VanillaAct(6, act_num=2)
    lslu = create_act("lslu", channels=6, n=2, learnable=False)
    lslu.load_state_dict(vanilla.state_dict(), strict=False)  # weight and bn; θ=1, ω=0 stay
    vanilla.train(), lslu.train()
    x = torch.randn(3, 6, 5, 5)
    assert torch.allclose(vanilla(x), lslu(x), atol=1e-6)


def test_vanillanet_sites_take_lslu_and_act_num_is_n():
    model = build_model("vanillanet_6", num_classes=10, width=0.25, act_num=2)
    sites = list_sites(model)
    assert [s.path for s in sites] == ["stem2.2", "stages.0.act", "stages.1.act", "stages.2.act", "stages.3.act"]
    assert [s.downsampling for s in sites] == [True, True, True, True, False]  # stride 1 in the last stage
    assert all(model.get_submodule(s.path).weight.shape[-1] == 5 for s in sites)  # (2n+1)² kernels
    apply_policy(model, "stages:1,2", "lslu", n=2)
    assert [type(model.get_submodule(s.path)).__name__ for s in sites] == [
        "VanillaAct",
        "LSLU",
        "LSLU",
        "VanillaAct",
        "VanillaAct",
    ]
    _train_step(model, 32)


def test_sites_command_prints_the_table_and_the_mask(capsys):
    assert main(["sites", "resnet18", "--policy", "downsampling"]) == 0
    out = capsys.readouterr().out
    assert "layer2.0.act2" in out and "resnet18: 17 sites; downsampling selects 4" in out
    assert "mask: 10000010001000100" in out
    assert main(["sites", "resnet18", "--policy", "mask:01"]) == 2
    assert "has 2 bits but the model has 17 activation sites" in capsys.readouterr().err
