"""Sites from one traced forward (DESIGN.md §3): layouts, stages where the network downsamples, eligibility, the
permuting adapter at channels-last sites, and the count of activations applied as functions."""

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from trainables.activations import LSLU, ChannelsLast
from trainables.insertion import apply_policy, list_sites, select_sites, trace_sites

NETS = {
    "convnext_atto": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10),
    "convnext_atto_mlp": lambda: timm.create_model("convnext_atto", pretrained=False, num_classes=10, conv_mlp=False),
    "regnetx_002": lambda: timm.create_model("regnetx_002", pretrained=False, num_classes=10),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", pretrained=False, num_classes=10),
    "mobilenetv3_small_050": lambda: timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10),
    "tv_resnet18": lambda: torchvision.models.resnet18(weights=None),
}


def _resolution(site):
    return site.shape[2:4] if site.layout == "nchw" else site.shape[1:3]


@pytest.mark.parametrize("name", sorted(NETS))
def test_stages_change_where_the_network_downsamples(name):
    sites = list_sites(NETS[name](), input_size=64)
    spatial = [s for s in sites if s.eligible]
    assert len({s.stage for s in spatial}) >= 3
    for a, b in zip(spatial, spatial[1:]):
        if b.stage > a.stage and a.stage > 0:  # a new stage after stage 1: its map is smaller
            later = [s for s in spatial if s.stage == b.stage]
            assert min(_resolution(s)[0] for s in later) < _resolution(a)[0]
        else:  # the same stage: the same resolution, or the drop happens inside a block of this stage
            assert b.stage >= a.stage and (b.stage > a.stage or _resolution(b)[0] <= _resolution(a)[0])
    by_stage = {}
    for s in spatial:
        by_stage.setdefault(s.stage, set()).add(_resolution(s))
    resolutions = [max(r[0] for r in by_stage[k]) for k in sorted(by_stage) if k > 0]
    assert resolutions == sorted(resolutions, reverse=True)
    chosen = select_sites(sites, "downsampling")
    stages_that_drop = [k for k in sorted(by_stage)[1:] if min(r[0] for r in by_stage[k]) < resolutions[0]]
    for k in stages_that_drop:  # each downsampling stage has a downsampling site (in it, or ending the one before)
        assert any(s.stage in (k, k - 1) for s in chosen)


def test_resnet18_cifar_answers_stay():
    from trainables.models import build_model

    sites = list_sites(build_model("resnet18", num_classes=10, cifar_stem=True))
    assert "".join("1" if s.downsampling else "0" for s in sites) == "10000010001000100"
    assert [s.stage for s in sites] == [0] + [k for k in range(1, 5) for _ in range(4)]


def test_convnext_mlp_gelus_are_nhwc_and_take_lslu_through_the_adapter():
    model = NETS["convnext_atto_mlp"]()
    sites = list_sites(model, input_size=32)
    gelus = [s for s in sites if s.path.endswith("mlp.act")]
    assert gelus and all(s.layout == "nhwc" and s.eligible and s.channels == s.shape[-1] for s in gelus)
    assert all(s.layout == "nchw" for s in list_sites(NETS["convnext_atto"](), input_size=32))  # conv_mlp: NCHW
    path = gelus[0].path
    torch.manual_seed(0)
    assert apply_policy(model, f"paths:{path}", "lslu", input_size=32, n=1) == [path]
    adapter = model.get_submodule(path)
    assert isinstance(adapter, ChannelsLast) and isinstance(adapter.inner, LSLU)
    assert [s.path for s in list_sites(model, input_size=32)] == [s.path for s in sites]  # still one site
    x = torch.randn(2, 5, 6, gelus[0].channels, requires_grad=True)
    out = adapter(x)
    reference = adapter.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert torch.allclose(out, reference)
    out.square().sum().backward()
    assert x.grad is not None and adapter.inner.weight.grad is not None
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


class _SE(nn.Module):  # named like timm's gate: its activations are not sites
    def __init__(self, c):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1)

    def forward(self, x):
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


_SE.__name__ = "SqueezeExcite"


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv, self.act, self.se = nn.Conv2d(cin, cout, 3, stride, 1), nn.SiLU(), _SE(cout)
        self.mlp = nn.Sequential(nn.Linear(cout, 2 * cout), nn.GELU(), nn.Linear(2 * cout, cout))

    def forward(self, x):
        x = self.se(self.act(self.conv(x)))
        return x + self.mlp(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.stage1, self.stage2 = nn.Sequential(_Block(8, 8, 1)), nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.head = nn.Sequential(nn.Linear(16, 12), nn.Hardswish(), nn.Linear(12, 10))

    def forward(self, x):
        return self.head(F.relu(self.stage2(self.stage1(self.stem(x)))).mean((2, 3)))


def test_a_tiny_network_gives_exactly_the_sites_layouts_and_functional_calls():
    trace = trace_sites(_Tiny(), input_size=(3, 16, 16))
    rows = [(s.path, s.layout, s.stage, s.channels, s.downsampling, s.eligible) for s in trace.sites]
    assert rows == [
        ("stem.1", "nchw", 0, 8, True, True),
        ("stage1.0.act", "nchw", 1, 8, False, True),
        ("stage1.0.mlp.1", "nhwc", 1, 16, False, True),
        ("stage2.0.act", "nchw", 2, 16, False, True),
        ("stage2.0.mlp.1", "nhwc", 2, 32, True, True),
        ("stage2.1.act", "nchw", 2, 16, False, True),
        ("stage2.1.mlp.1", "nhwc", 2, 32, False, True),
        ("head.1", "flat", 3, 12, False, False),
    ]
    assert trace.sites[-1].reason == "no spatial map: layout flat"
    assert trace.functional_calls == {"relu": 1}  # the SE gate's ReLU is a module inside SE, not counted


def test_lslu_goes_only_to_sites_with_a_spatial_map():
    model = _Tiny()
    replaced = apply_policy(model, "all", "lslu", input_size=16, n=1)
    assert "head.1" not in replaced and len(replaced) == 7
    assert isinstance(model.get_submodule("stage1.0.mlp.1"), ChannelsLast)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"head\.1 \(no spatial map: layout flat\)"):
        apply_policy(_Tiny(), "mask:00000001", "lslu", input_size=16)
    assert apply_policy(_Tiny(), "mask:00000001", "relu", input_size=16) == ["head.1"]  # any activation can go there


def test_a_real_cpu_model_is_traced_without_touching_it():
    model = _Tiny().train()
    bn = nn.BatchNorm2d(8)
    model.stem.insert(1, bn)
    before = bn.running_mean.clone()
    assert len(list_sites(model, input_size=16)) == 8
    assert model.training and torch.equal(bn.running_mean, before) and bn.running_mean.device.type == "cpu"


def test_the_sites_command_shows_layout_eligibility_and_functional_calls():
    from orchestrator.cli import sites_table

    table = sites_table("resnet18", "downsampling", cifar_stem=True)
    assert "layout" in table and "eligible" in table and "functional activation calls: 0" in table
    assert "mask: 10000010001000100" in table


class _ConvBnAct(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class _SequentialTrunk(nn.Module):
    """The whole trunk is one top-level nn.Sequential: the module around every drop is the trunk itself."""

    def __init__(self, strides=(1, 2, 1, 2, 1)):
        super().__init__()
        widths = [3] + [8 * 2 ** sum(s == 2 for s in strides[: i + 1]) for i in range(len(strides))]
        self.body = nn.Sequential(*(_ConvBnAct(widths[i], widths[i + 1], s) for i, s in enumerate(strides)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 10))

    def forward(self, x):
        return self.head(self.body(x))


def _drops(sites):
    """The indices of the spatial sites whose map is smaller than the previous spatial site's."""
    spatial = [s for s in sites if s.eligible]
    return [b.index for a, b in zip(spatial, spatial[1:]) if _resolution(b)[0] < _resolution(a)[0]]


@pytest.mark.parametrize(
    "strides, stages, downsampling",
    [
        ((1, 2, 1), [1, 2, 2], ["body.1.act"]),  # one drop: the trunk's input and output have the two resolutions
        ((1, 2, 1, 2, 1), [1, 2, 2, 3, 3], ["body.1.act", "body.3.act"]),
    ],
)
def test_a_sequential_trunk_gets_a_new_stage_at_each_resolution_drop(strides, stages, downsampling):
    sites = list_sites(_SequentialTrunk(strides), input_size=(3, 32, 32))
    assert [s.path for s in sites] == [f"body.{i}.act" for i in range(len(strides))]
    drops = _drops(sites)
    assert drops == [i for i, s in enumerate(strides) if s == 2]  # the strided blocks
    assert [s.stage for s in sites] == stages == [1 + sum(d <= i for d in drops) for i in range(len(sites))]
    assert [s.path for s in sites if s.downsampling] == downsampling  # the blocks that downsample


def test_vgg11_marks_the_site_before_each_pool_between_blocks():
    sites = list_sites(torchvision.models.vgg11(weights=None), input_size=(3, 224, 224))
    spatial = [s for s in sites if s.eligible]
    assert [_resolution(s)[0] for s in spatial] == [224, 112, 56, 56, 28, 28, 14, 14]
    assert [s.stage for s in spatial] == [1, 2, 3, 3, 4, 4, 5, 5]  # one stage per resolution
    before_a_drop = [sites[i - 1].path for i in _drops(sites)]
    assert before_a_drop == ["features.1", "features.4", "features.9", "features.14"]
    # and the last conv's site, before the pool that takes 14² to 7² (not a global pool: no 1×1 map)
    assert [s.path for s in sites if s.downsampling] == before_a_drop + ["features.19"]
    assert [s.path for s in select_sites(sites, "downsampling")] == before_a_drop + ["features.19"]
    assert not any(s.downsampling for s in list_sites(torchvision.models.vgg11(weights=None), 32)[-3:])  # 2² to 1²


def test_a_strided_conv_in_a_flat_sequential_marks_the_site_it_starts_a_block_for():
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    sites = list_sites(nn.Sequential(trunk, nn.AdaptiveAvgPool2d(1)), input_size=(3, 16, 16))
    assert [(s.path, _resolution(s), s.stage, s.downsampling) for s in sites] == [
        ("0.1", (16, 16), 1, False),
        ("0.3", (8, 8), 2, True),  # conv(stride 2)–ReLU: the block that halves the map ends here
    ]


def test_a_forward_that_reads_values_is_traced_on_real_tensors_and_validates():
    """``if x.sum() > 0`` cannot run on the meta device: the trace falls back to the real model (left as it was),
    and the driver's check of the trial's image size builds it for real instead of refusing it."""
    from tests.user_models import build, build_data_dependent
    from trainables.config import TrialConfig

    model = build_data_dependent(10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same_without_the_branch = list_sites(build(10, depth=1), input_size=16)  # traced on the meta device
    assert list_sites(model, input_size=16) == same_without_the_branch and len(same_without_the_branch) == 2
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    TrialConfig(model="tests.user_models:build_data_dependent", image_size=16, insert_act="lslu", policy="all")
