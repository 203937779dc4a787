import pytest
import torch
from torch import nn

from trainables.activations import LSLU
from trainables.insertion import apply_policy, list_sites, mask_of, select_sites
from trainables.models import build_model

PATHS = ["stem.act", "stages.0.act", "stages.1.act", "stages.2.act"]


def _cnn():
    return build_model("digits_cnn", num_classes=10)


def test_sites_in_forward_order_with_channels_of_the_tensors_through_them():
    model = _cnn()
    sites = list_sites(model)
    assert [s.path for s in sites] == PATHS
    assert [s.index for s in sites] == [0, 1, 2, 3]
    assert [s.depth_fraction for s in sites] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    seen, order = {}, []

    def hook(name):
        def fn(module, inputs, output):
            seen[name] = output.shape[1]
            order.append(name)

        return fn

    for s in sites:
        model.get_submodule(s.path).register_forward_hook(hook(s.path))
    model(torch.randn(2, 3, 16, 16))
    assert order == PATHS
    assert {s.path: s.channels for s in sites} == seen


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("none", []),
        ("all", PATHS),
        ("first_k:1", PATHS[:1]),
        ("last_k:2", PATHS[2:]),
        ("last_k:0", []),
        ("mask:0101", [PATHS[1], PATHS[3]]),
        ("paths:stages.*", PATHS[1:]),
        ("paths:stem.*,stages.2.*", [PATHS[0], PATHS[3]]),
    ],
)
def test_policies_select_the_right_sites(policy, expected):
    model = _cnn()
    replaced = apply_policy(model, policy, "lslu", n=2)
    assert replaced == expected
    for path in PATHS:
        module = model.get_submodule(path)
        assert isinstance(module, LSLU) == (path in expected)
        if isinstance(module, LSLU):
            assert module.channels == next(s.channels for s in list_sites(_cnn()) if s.path == path)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert mask_of(list_sites(model), select_sites(list_sites(model), policy)) == "".join(
        "1" if p in expected else "0" for p in PATHS
    )


def test_wrong_length_mask_states_the_site_count():
    with pytest.raises(ValueError, match="has 3 bits but the model has 4 activation sites"):
        apply_policy(_cnn(), "mask:010")


@pytest.mark.parametrize("policy", ["everywhere", "mask:01x1", "first_k:two", "all:3", "paths:"])
def test_malformed_policies_are_refused(policy):
    with pytest.raises(ValueError, match="policy"):
        apply_policy(_cnn(), policy)


@pytest.mark.parametrize(
    "policy, message",
    [
        ("paths:stagez.*", "matches none of the model's 4 sites"),
        ("first_k:5", "asks for 5 sites; the model has 4"),
        ("last_k:9", "asks for 9 sites; the model has 4"),
    ],
)
def test_policies_that_select_no_intended_site_are_refused(policy, message):
    """A glob with a typo would otherwise train the plain network as if it were the insertion; a k beyond the sites
    would silently mean `all`."""
    with pytest.raises(ValueError, match=message):
        apply_policy(_cnn(), policy)


def test_a_module_shared_by_two_paths_is_refused():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), act, nn.Conv2d(4, 4, 3), act)
    with pytest.raises(ValueError, match="shared by paths"):
        apply_policy(model, "all")
