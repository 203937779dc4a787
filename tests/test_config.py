import pytest

from trainables.config import ConfigError, TrialConfig


def test_site_keys_fold_into_a_mask():
    cfg = TrialConfig.from_flat({"site_0": 1, "site_1": 0, "site_2": 0, "site_3": 1, "policy": "mask", "n": 2})
    assert (cfg.policy, cfg.mask, cfg.policy_spec) == ("mask", "1001", "mask:1001")
    assert "site_0" not in cfg.to_dict()


@pytest.mark.parametrize(
    "flat, key",
    [
        ({"epochz": 3}, "epochz"),
        ({"epochs": "ten"}, "epochs"),
        ({"n": 1.5}, "n"),
        ({"dropout": 1.0}, "dropout"),
        ({"model": "resnet9000"}, "model"),
        ({"insert_act": "swish9"}, "insert_act"),
        ({"act": "prelu_x"}, "act"),
        ({"policy": "mask:0101"}, "policy"),
        ({"policy": "mask", "mask": "01a1"}, "mask"),
        ({"site_0": 1, "site_2": 1}, "site_*"),
        ({"site_0": 1, "policy": "all"}, "policy"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs"),
        ({"pwlu_intervals": 0}, "pwlu_intervals"),
        ({"pwlu_warmup_epochs": 0}, "pwlu_warmup_epochs"),
        ({"la_alpha": 0.0}, "la_alpha"),
        ({"insert_act": "pwlu", "epochs": 5}, "pwlu_warmup_epochs"),  # default 5 warm-up epochs: PWLU would stay ReLU
        ({"act": "pwlu", "insert_act": "la_silu", "epochs": 3, "pwlu_warmup_epochs": 3}, "pwlu_warmup_epochs"),
    ],
)
def test_bad_values_name_the_key(flat, key):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat(flat)
    assert err.value.key == key
    assert str(err.value).startswith(f"{key}: ")


def test_yaml_style_strings_for_floats_are_accepted():
    assert TrialConfig.from_flat({"lr": "1e-3"}).lr == 1e-3  # PyYAML reads 1e-3 as a string


def test_n_zero_means_no_insertion():
    assert not TrialConfig.from_flat({"n": 0}).inserts
    assert not TrialConfig.from_flat({"policy": "none"}).inserts
    assert TrialConfig.from_flat({"n": 1}).inserts


def test_model_options_are_checked_against_the_model():
    assert TrialConfig.from_flat({"model": "vanillanet_5", "width": 0.25}).width == 0.25
    with pytest.raises(ConfigError, match="no width multiplier") as err:
        TrialConfig.from_flat({"model": "resnet18", "width": 0.5})
    assert err.value.key == "width"
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"policy": "stages", "stages": "one"})
    assert err.value.key == "stages"
    assert TrialConfig.from_flat({"policy": "stages", "stages": "1, 3"}).policy_spec == "stages:1,3"
    assert TrialConfig.from_flat({"policy": "downsampling"}).policy_spec == "downsampling"


def test_native_act_keeps_the_model_and_gives_lslu_a_relu_base():
    cfg = TrialConfig.from_flat({"model": "mobilenetv3_large_100", "act": "native"})
    assert cfg.base_act == "relu"
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"act": "nativ"})
    assert err.value.key == "act" and "native" in err.value.message


def test_pwlu_warmup_only_matters_where_pwlu_is_used():
    assert TrialConfig.from_flat({"insert_act": "lslu", "epochs": 5}).pwlu_warmup_epochs == 5
    assert TrialConfig.from_flat({"insert_act": "pwlu", "policy": "none", "epochs": 5}).epochs == 5
    cfg = TrialConfig.from_flat(
        {"insert_act": "pwlu", "epochs": 6, "pwlu_warmup_epochs": 2, "pwlu_intervals": 8, "la_alpha": "0.1"}
    )
    assert (cfg.pwlu_warmup_epochs, cfg.pwlu_intervals, cfg.la_alpha) == (2, 8, 0.1)
