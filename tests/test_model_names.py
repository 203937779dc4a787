"""`model:` in three forms (DESIGN.md §3): the project's registry, any timm name, an import path package.module:factory;
with model_args, pretrained weights only from a file, did-you-mean for a typo, and cifar_stem recipes by family."""

import pickle
import textwrap

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from search_spaces.schema import SpecError, parse_sweep
from trainables.config import ConfigError, TrialConfig
from trainables.loop import build_network
from trainables.models import build_model, list_models, register_model

TIMM_NAMES = ["convnext_atto", "regnetx_002", "efficientnet_b0", "mobilenetv3_small_050"]
USER = "tests.user_models:build"


def _sweep(text: str, tmp_path):
    text = textwrap.dedent(text)
    return parse_sweep(yaml.safe_load(text), text, str(tmp_path / "sweep.yaml"))


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_a_timm_name_builds_directly_and_from_a_trial_config(name):
    assert name not in list_models()  # timm's, not the project's
    model = build_model(name, num_classes=7, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)
    cfg = TrialConfig.from_flat({"model": name, "act": "native", "n": 0, "dropout": 0.2, "image_size": 64})
    net, _ = build_network(cfg, num_classes=5, in_chans=3)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5) and net.drop_rate == 0.2


def test_a_timm_name_takes_the_base_activation_and_the_inserted_one():
    cfg = TrialConfig.from_flat({"model": "regnetx_002", "act": "silu", "policy": "first_k", "k": 2})
    net, mask = build_network(cfg, num_classes=5, in_chans=3)
    kinds = [type(m).__name__ for m in net.modules()]
    assert mask.startswith("11") and kinds.count("LSLU") == 2 and "SiLU" in kinds and "ReLU" not in kinds
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_import_paths_build_torchvision_and_a_users_factory_with_model_args():
    tv = build_model("torchvision.models:resnet18", num_classes=4, in_chans=1)
    assert type(tv).__name__ == "ResNet" and tv.conv1.in_channels == 1  # no in_chans argument: the first conv rebuilt
    assert tv(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    mine = build_model(USER, num_classes=3, in_chans=2, model_args={"width": 0.5, "depth": 3})
    assert (mine.width, mine.depth, mine.stem[0].in_channels, mine.stem[0].out_channels) == (0.5, 3, 2, 8)
    cfg = TrialConfig.from_flat({"model": USER, "model_args.width": 0.25, "model_args": {"depth": 1}, "n": 0})
    assert cfg.model_args == {"depth": 1, "width": 0.25}
    assert cfg.params()["model_args.width"] == 0.25 and "model_args" not in cfg.params()
    net, _ = build_network(cfg, num_classes=3, in_chans=3)
    assert (net.width, net.depth) == (0.25, 1)
    assert TrialConfig.from_flat(cfg.params()) == cfg  # the flat form folds back


def test_model_args_reach_a_timm_constructor():
    model = build_model("convnext_atto", num_classes=10, model_args={"depths": (1, 1, 1, 1)})
    assert [len(stage.blocks) for stage in model.stages] == [1, 1, 1, 1]
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": "convnext_atto", "model_args.no_such_arg": 1})
    assert err.value.key == "model_args" and "no_such_arg" in err.value.message


def test_a_model_built_for_another_image_size_is_refused_naming_image_size(tmp_path):
    """A ViT's patch grid is fixed when it is built: at image_size 32 with timm's default 224 every trial would fail,
    so the trial config says so; built for 32 (model_args img_size) it traces at 32, its GELUs on tokens."""
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": "vit_tiny_patch16_224", "image_size": 32})
    assert err.value.key == "image_size" and "does not run on 32×32 images" in err.value.message
    assert "(Input height (32) doesn't match model (224))" in err.value.message
    sweep = _sweep(
        """
        name: vit
        trial: {model: vit_tiny_patch16_224, image_size: 32, model_args: {img_size: 32}, epochs: 1}
        space: {mask: {type: sites}}
        """,
        tmp_path,
    )
    assert sweep.site_count == 12 and {s.layout for s in sweep.sites} == {"tokens"}


def test_an_unknown_name_lists_the_closest_ones():
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": "convnxt_tiny"})
    assert err.value.key == "model" and "did you mean convnext_tiny" in err.value.message
    with pytest.raises(ValueError, match="did you mean.*resnet18"):
        build_model("resnet_18", num_classes=10)


def test_an_import_path_names_the_missing_module_or_attribute():
    with pytest.raises(ConfigError, match="cannot import module 'tests.no_such_module'"):
        TrialConfig.from_flat({"model": "tests.no_such_module:build"})
    with pytest.raises(ConfigError, match="'tests.user_models' has no attribute 'biuld'; did you mean build"):
        TrialConfig.from_flat({"model": "tests.user_models:biuld"})
    with pytest.raises(ConfigError, match="returned a dict, not an nn.Module"):
        TrialConfig.from_flat({"model": "tests.user_models:not_a_model"})
    with pytest.raises(ConfigError, match="NOT_CALLABLE.*not a callable"):
        TrialConfig.from_flat({"model": "tests.user_models:NOT_CALLABLE"})


def test_pretrained_weights_come_only_from_a_file_or_the_cache(tmp_path):
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": USER, "pretrained": True})
    assert err.value.key == "pretrained"
    assert "never downloaded" in err.value.message and "pretrained_file" in err.value.message
    with pytest.raises(ConfigError, match="pretrained is false"):
        TrialConfig.from_flat({"model": USER, "pretrained_file": str(tmp_path / "w.pth")})
    source = build_model(USER, num_classes=3)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    cfg = TrialConfig.from_flat({"model": USER, "pretrained": True, "pretrained_file": str(tmp_path / "w.pth"), "n": 0})
    loaded, _ = build_network(cfg, num_classes=5, in_chans=3)  # another head: it stays initialised
    assert torch.equal(loaded.stem[0].weight, source.stem[0].weight)
    assert loaded.head.weight.shape == (5, 16)
    timm_source = build_model("regnetx_002", num_classes=10)
    torch.save(timm_source.state_dict(), tmp_path / "regnet.pth")
    timm_loaded = build_model(
        "regnetx_002", num_classes=10, pretrained=True, pretrained_file=str(tmp_path / "regnet.pth")
    )
    assert torch.equal(timm_loaded.stem.conv.weight, timm_source.stem.conv.weight)


def _final_side(model, x) -> int:
    """The side of the last feature map (before pooling)."""
    seen = []
    last = model.layer4 if hasattr(model, "layer4") else None
    if last is None:
        return model.forward_features(x).shape[-1]
    last.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    model(x)
    return seen[0]


@pytest.mark.parametrize("name", TIMM_NAMES + ["torchvision.models:resnet18"])
def test_cifar_stem_keeps_more_resolution_for_each_family(name):
    x = torch.randn(2, 3, 32, 32)
    plain = build_model(name, num_classes=10).eval()
    cifar = build_model(name, num_classes=10, cifar_stem=True).eval()
    assert _final_side(cifar, x) > _final_side(plain, x)
    assert cifar(x).shape == (2, 10)
    if name == "convnext_atto":
        assert cifar.stem[0].out_channels == plain.stem[0].out_channels and cifar.stem[0].stride == (1, 1)


def test_cifar_stem_without_a_recipe_names_the_class():
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": "vit_tiny_patch16_224", "cifar_stem": True})
    assert err.value.key == "cifar_stem"
    assert "no CIFAR stem recipe" in err.value.message and "VisionTransformer" in err.value.message
    with pytest.raises(ValueError, match="no CIFAR stem recipe for model 'tests.user_models:build' \\(TinyNet\\)"):
        build_model(USER, num_classes=10, cifar_stem=True)


def test_errors_raised_in_a_trial_survive_pickling():
    for err in (
        ConfigError("model_args.width", "must be positive"),
        SpecError("s.yaml", "space.lr", "bad range"),
        SpecError("s.yaml", "", "not valid YAML"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.key == err.key and back.message == err.message


def test_a_registration_in_main_is_refused_before_any_trial():
    def notebook_net(num_classes, in_chans=3, cifar_stem=False, act="native", dropout=0.0):
        return torch.nn.Linear(in_chans, num_classes)

    notebook_net.__module__ = "__main__"  # as a function defined in a notebook or the driver's script
    register_model("notebook_net_for_test")(notebook_net)
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"model": "notebook_net_for_test"})
    assert "__main__" in err.value.message and "import" in err.value.message
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


def test_a_sweep_searches_one_model_args_entry(tmp_path):
    sweep = _sweep(
        f"""
        name: width_search
        trial: {{model: "{USER}", model_args: {{depth: 1}}, n: 0}}
        space: {{model_args.width: [0.25, 0.5]}}
    """,
        tmp_path,
    )
    assert sweep.fixed_values()["model_args"] == {"depth": 1}
    cfg = TrialConfig.from_flat({**sweep.fixed_values(), "model_args.width": 0.5})
    assert cfg.model_args == {"depth": 1, "width": 0.5}
    with pytest.raises(SpecError, match="space.model_args.width: also fixed in trial.model_args.width"):
        _sweep(
            f"""
            name: both
            trial: {{model: "{USER}", model_args: {{width: 1.0}}}}
            space: {{model_args.width: [0.25, 0.5]}}
        """,
            tmp_path,
        )
    with pytest.raises(SpecError, match="space.model_args.bogus.choices\\[0\\]"):
        _sweep(
            f"""
            name: bad_entry
            trial: {{model: "{USER}"}}
            space: {{model_args.bogus: [1, 2]}}
        """,
            tmp_path,
        )


def test_the_models_command_lists_matching_names(capsys):
    assert main(["models", "conv*"]) == 0
    out = capsys.readouterr().out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert "convnext_atto" in listed and "convnext_tiny" in listed and all(n.startswith("conv") for n in listed)
    assert "regnetx_002" not in out
    assert main(["models", "vanilla*"]) == 0
    assert "vanillanet_5" in capsys.readouterr().out
    assert main(["models", "netx_00"]) == 0  # no wildcard: a part of the name
    listed = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert "regnetx_002" in listed and all("netx_00" in n for n in listed)


@pytest.mark.slow
def test_a_sweep_trains_a_timm_model_the_project_does_not_register(ray_local, tmp_path, tracking_uri):
    from orchestrator.driver import run_sweep

    sweep = _sweep(
        """
        name: timm_regnet
        trial: {model: regnetx_002, cifar_stem: true, epochs: 1, warmup_epochs: 0, train_samples: 128,
                val_samples: 64, batch_size: 64, policy: first_k, k: 2}
        space: {model_args.drop_path_rate: [0.05]}
        search: {algorithm: random, num_samples: 1, max_concurrent: 1, scheduler: none}
    """,
        tmp_path,
    )
    outcome = run_sweep(sweep, tracking_uri=tracking_uri, storage=str(tmp_path / "ray"))
    assert [r["status"] for r in outcome.rows] == ["completed"]
    assert outcome.rows[0]["config.model_args.drop_path_rate"] == 0.05
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("timm_regnet")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert child.data.params["model"] == "regnetx_002"
    assert child.data.params["model_args.drop_path_rate"] == "0.05"
    assert child.data.metrics["best_val_acc"] >= 0
