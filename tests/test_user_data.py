"""``dataset:`` by import path (a torchvision class, a user's factory), ``data_args``, the data_dir check before
Ray and the sweep file's ``runtime_env`` (DESIGN.md §4): real files, real loading code."""

import textwrap
import time

import pytest
import torch
import yaml

from orchestrator.cli import main
from search_spaces.schema import SpecError, load_sweep, parse_sweep
from tiny_datasets import write_factory_package, write_fashion_mnist
from trainables.config import ConfigError, TrialConfig
from trainables.data import load_dataset
from trainables.loop import Training

FASHION = "torchvision.datasets:FashionMNIST"


def test_fashion_mnist_in_its_own_files_loads_with_channels_and_classes_from_the_data(tmp_path):
    root = write_fashion_mnist(tmp_path / "data", n_train=20, n_test=10)
    data = load_dataset(FASHION, image_size=16, data_dir=str(root))
    assert (data.n_train, data.n_val, data.num_classes, data.in_chans) == (20, 10, 10, 1)  # grayscale kept 1-channel
    data.workers = 0
    x, y = next(data.train_batches(8, torch.Generator().manual_seed(0), 16))
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(float(x.mean())) < 0.5  # normalized with the data's own statistics
    labels = torch.cat([b[1] for b in data.val_batches(4, 16)])
    assert sorted(labels.tolist()) == sorted(i % 10 for i in range(10))


def test_a_fashion_mnist_trial_trains_a_one_channel_network(tmp_path):
    root = write_fashion_mnist(tmp_path / "data")
    cfg = TrialConfig.from_flat(
        {
            "dataset": FASHION,
            "data_dir": str(root),
            "model": "digits_cnn",
            "epochs": 1,
            "warmup_epochs": 0,
            "batch_size": 8,
            "workers": 0,
            "n": 1,
        }
    )
    training = Training(cfg)
    assert training.data.in_chans == 1 and next(training.model.parameters()).shape[1] == 1
    metrics = training.run_epoch()
    assert metrics["train_loss"] > 0 and 0 <= metrics["val_acc"] <= 100


def test_a_user_factory_gets_data_args_and_gives_the_classes(tmp_path, monkeypatch):
    write_factory_package(tmp_path / "user", "lslu_test_factory_a")
    monkeypatch.syspath_prepend(str(tmp_path / "user"))
    cfg = TrialConfig.from_flat(
        {"dataset": "lslu_test_factory_a.data:build", "data_args.n": 30, "data_args.classes": 5}
    )
    assert cfg.data_args == {"n": 30, "classes": 5}
    assert cfg.params()["data_args.n"] == 30 and "data_args" not in cfg.params()
    data = load_dataset(cfg.dataset, 8, data_args=cfg.data_args)
    assert (data.n_train, data.n_val, data.num_classes, data.in_chans) == (30, 15, 5, 3)
    data.workers = 0
    x, _ = next(data.train_batches(30, torch.Generator().manual_seed(0), 8))
    assert x.shape == (30, 3, 8, 8)  # the factory's 12×12 resized to the trial's image_size


def test_data_args_are_refused_for_a_named_dataset():
    with pytest.raises(ConfigError, match="data_args: only a dataset given by import path"):
        TrialConfig.from_flat({"dataset": "digits", "data_args": {"n": 3}})


def _sweep_file(folder, trial: str, extra: str = "") -> str:
    path = folder / "s.yaml"
    path.write_text(
        textwrap.dedent(f"""
        name: userdata
        trial: {trial}
        search: {{algorithm: random, num_samples: 1, scheduler: none}}
    """)
        + textwrap.dedent(extra)
    )
    return str(path)


@pytest.mark.parametrize(
    "trial, expected",
    [
        ("{dataset: cifar10, data_dir: /nonexistent/cifar}", "cifar-10-batches-py/"),
        ("{dataset: cifar100, data_dir: /nonexistent/cifar}", "cifar-100-python/"),
        ("{dataset: imagefolder, data_dir: /nonexistent/cifar}", "one folder of images per class"),
        (f"{{dataset: '{FASHION}', data_dir: /nonexistent/cifar}}", "Dataset not found"),
    ],
)
def test_validate_refuses_a_data_dir_without_the_data_naming_the_path(tmp_path, capsys, trial, expected):
    file = _sweep_file(tmp_path, trial)
    assert main(["validate", file]) == 2
    err = capsys.readouterr().err
    assert "trial.data_dir" in err and "/nonexistent/cifar" in err and expected in err, err


def test_validate_accepts_a_data_dir_that_holds_the_data(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "data")
    assert main(["validate", _sweep_file(tmp_path, f"{{dataset: '{FASHION}', data_dir: '{root}'}}")]) == 0
    assert ": ok" in capsys.readouterr().out


def test_a_factory_typo_fails_in_validation_naming_the_attribute(tmp_path, capsys):
    write_factory_package(tmp_path, "lslu_test_factory_b")
    file = _sweep_file(tmp_path, "{dataset: 'lslu_test_factory_b.data:biuld'}", "runtime_env: {working_dir: .}\n")
    start = time.monotonic()
    assert main(["validate", file]) == 2
    err = capsys.readouterr().err
    assert "trial.dataset" in err and "has no attribute 'biuld'" in err and "did you mean build" in err, err
    assert time.monotonic() - start < 10


def test_a_missing_module_fails_in_validation_naming_it(tmp_path):
    with pytest.raises(SpecError, match="cannot import module 'nopkg_lslu.data'"):
        load_sweep(_sweep_file(tmp_path, "{dataset: 'nopkg_lslu.data:build'}"))


def test_runtime_env_paths_are_relative_to_the_sweep_file_and_make_the_code_importable(tmp_path, monkeypatch):
    sweep_dir = write_factory_package(tmp_path / "project", "lslu_test_factory_c")
    (sweep_dir / "extra").mkdir()
    file = _sweep_file(
        sweep_dir,
        "{dataset: 'lslu_test_factory_c.data:build', data_args: {n: 10}}",
        "runtime_env: {working_dir: ., py_modules: [extra], env_vars: {A: '1'}}\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    sweep = load_sweep(file)
    env = sweep.spec.runtime_env
    assert env == {
        "working_dir": str(sweep_dir.resolve()),
        "py_modules": [str((sweep_dir / "extra").resolve())],
        "env_vars": {"A": "1"},
    }
    assert sweep.base.data_args == {"n": 10}
    # resume reparses the stored text with the run's folder: the same absolute paths from any directory
    again = parse_sweep(yaml.safe_load(sweep.source), sweep.source, "s.yaml", base_dir=str(sweep_dir))
    assert again.spec.runtime_env == env


def test_a_missing_runtime_env_folder_is_refused(tmp_path):
    file = _sweep_file(tmp_path, "{}", "runtime_env: {working_dir: ./nowhere}\n")
    with pytest.raises(SpecError, match=r"runtime_env.working_dir: './nowhere'.*does not exist"):
        load_sweep(file)


def test_a_data_args_entry_can_be_searched(tmp_path, monkeypatch):
    write_factory_package(tmp_path, "lslu_test_factory_d")
    file = _sweep_file(
        tmp_path,
        "{dataset: 'lslu_test_factory_d.data:build'}",
        "space: {data_args.classes: [2, 4]}\nruntime_env: {working_dir: .}\n",
    )
    sweep = load_sweep(file)
    assert list(sweep.spec.space) == ["data_args.classes"]
    cfg = TrialConfig.from_flat({**sweep.fixed_values(), "data_args.classes": 4})
    assert cfg.data_args == {"classes": 4}
