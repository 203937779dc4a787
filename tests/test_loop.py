"""The plain-torch loop: it learns digits, it is reproducible, and a restored state continues exactly."""

import io

import numpy as np

import pytest
import torch

from trainables.activations import LSLU, PWLU, LayerAct, PReLU
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.insertion import list_sites
from trainables.loop import Diverged, Training, build_network
from trainables.recipe import warmup_cosine

FAST = dict(epochs=3, n=1, policy="mask", mask="0101", batch_size=64, lr=4e-3, seed=3)


def test_loop_learns_digits():
    training = Training(TrialConfig(**FAST))
    accs = [training.run_epoch()["val_acc"] for _ in range(3)]
    assert training.done and training.epoch == 3
    assert accs[-1] > 90 and accs[-1] > accs[0]
    assert training.mask == "0101" and training.lslu_sites == 2
    assert [h["epoch"] for h in training.act_history] == [1, 2, 3]
    assert set(training.act_history[-1]["state"]) == {"stages.0.act", "stages.2.act"}


def test_same_seed_same_metrics_on_cpu():
    runs = []
    for _ in range(2):
        training = Training(TrialConfig(**{**FAST, "epochs": 2}))
        runs.append([{k: v for k, v in training.run_epoch().items() if k != "epoch_time_s"} for _ in range(2)])
    assert runs[0] == runs[1]


def test_restored_state_continues_exactly_where_it_stopped():
    """Train 3 epochs straight; train 2, save, restore into a fresh Training, train 1: same epoch-3 metrics."""
    straight = Training(TrialConfig(**FAST))
    expected = [straight.run_epoch() for _ in range(3)][-1]

    first = Training(TrialConfig(**FAST))
    first.run_epoch(), first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Training(TrialConfig(**FAST))
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.epoch == 2
    got = resumed.run_epoch()
    assert resumed.epoch == 3 and resumed.done
    for key in ("train_loss", "val_loss", "val_acc", "lr"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    assert [h["epoch"] for h in resumed.act_history] == [1, 2, 3]


def test_nan_loss_raises_diverged():
    training = Training(TrialConfig(**{**FAST, "lr": 1e6, "optimizer": "sgd", "weight_decay": 0.0}))
    with pytest.raises(Diverged, match="loss became nan|loss became inf"):
        for _ in range(3):
            training.run_epoch()


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0)


def test_no_weight_decay_on_norms_biases_theta_omega():
    training = Training(TrialConfig(**{**FAST, "granularity": "channel"}))
    decay, no_decay = training.optimizer.param_groups
    named = {id(p): n for n, p in training.model.named_parameters()}
    no_decay_names = {named[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert {"stages.0.act.theta", "stages.0.act.omega", "stem.bn.weight", "fc.bias"} <= no_decay_names
    assert all(named[id(p)].endswith("weight") and "bn" not in named[id(p)] for p in decay["params"])


def test_vanillanet_deep_training_lambda_rises_each_epoch_and_the_record_is_fused():
    cfg = TrialConfig(
        model="vanillanet_5",
        width=0.25,
        cifar_stem=True,
        epochs=3,
        deep_train_epochs=2,
        n=2,
        policy="stages:1",
        train_samples=128,
        val_samples=64,
        batch_size=64,
    )
    training = Training(cfg)
    seen = []
    for _ in range(3):
        training.run_epoch()
        seen.append(training.model.stem_act.act_learn)
    assert seen == [0.0, 0.5, 1.0]  # set before each epoch: epoch / deep_train_epochs, capped at 1
    assert training.mask == "0100" and training.lslu_sites == 1
    record = training.summary()
    # deploy form: 1×1 convs merged
    assert record["params_m"] < sum(p.numel() for p in training.model.parameters()) / 1e6
    assert record["flops_g"] > 0 and record["latency_ms"] > 0


def test_subsets_take_the_first_images_of_each_split():
    training = Training(TrialConfig(**{**FAST, "train_samples": 100, "val_samples": 50}))
    full = load_dataset("digits", 16)
    assert training.data.n_train == 100 and training.data.n_val == 50
    assert torch.equal(training.data.train_y, full.train_y[:100])


@pytest.mark.parametrize(
    "recipe",
    [
        dict(optimizer="lamb", loss="bce", label_smoothing=0.1, ema_decay=0.9, lr=5e-3),
        dict(optimizer="adamw", loss="ce", lr=3e-3),
        dict(optimizer="sgd", loss="ce", lr=0.05, weight_decay=5e-4),
        dict(optimizer="adamw", loss="ce", mixup=0.2, cutmix=1.0, label_smoothing=0.1, clip_grad=1.0, lr=3e-3),
    ],
)
def test_each_recipe_learns_digits(recipe):
    training = Training(TrialConfig(**{**FAST, "epochs": 4, "warmup_epochs": 1, **recipe}))
    while not training.done:
        metrics = training.run_epoch()
    assert training.best_val_acc > 80  # chance is 10 %
    assert ("ema_val_acc" in metrics) == (recipe.get("ema_decay", 0) > 0)


def test_ema_and_augmentation_continue_exactly_after_a_restore(tmp_path):
    from tests.test_data import write_cifar

    root = write_cifar(tmp_path, n_train=40, n_test=20)
    cfg = TrialConfig(
        dataset="cifar10",
        data_dir=str(root),
        image_size=32,
        epochs=3,
        batch_size=50,
        n=1,
        policy="last_k",
        k=2,
        ema_decay=0.8,
        seed=5,
        warmup_epochs=0,
    )
    straight = Training(cfg)
    expected = [straight.run_epoch() for _ in range(3)][-1]
    first = Training(cfg)
    first.run_epoch(), first.run_epoch()
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    resumed = Training(cfg)
    resumed.load_state_dict(torch.load(path, weights_only=False))
    got = resumed.run_epoch()
    for key in ("train_loss", "val_loss", "ema_val_loss", "ema_val_acc"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


def test_early_stopping_ends_the_trial_with_a_reason():
    training = Training(TrialConfig(**{**FAST, "epochs": 30, "lr": 1e-9, "warmup_epochs": 0, "early_stop_patience": 2}))
    while not training.done:
        training.run_epoch()
    assert training.epoch < 30 and training.epoch - training.best_epoch == 2
    assert training.stop_reason.startswith("early stopping: no better val_acc for 2 epochs")


def test_convergence_value_is_the_mean_and_std_of_the_last_ten_epochs():
    from trainables.metrics import convergence_metrics

    history = [{"epoch": e, "state": {"s": {"theta/1": float(e), "omega/1": -float(e)}}} for e in range(1, 16)]
    got = convergence_metrics(history)
    assert got["theta_conv/s/1"] == pytest.approx(10.5)  # mean of epochs 6..15
    assert got["theta_conv_std/s/1"] == pytest.approx(np.std(np.arange(6, 16)))
    assert got["omega_conv/s/1"] == pytest.approx(-10.5)


def test_oom_is_reported_with_the_batch_size():
    from trainables.trainable import _failure

    status, reason = _failure(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), TrialConfig(batch_size=4096)
    )
    assert status == "oom" and "batch_size 4096" in reason and "Tried to allocate 2.00 GiB" in reason


# ---- learnable activations inside the loop -------------------------------------------------------------------

PWLU_FAST = dict(
    epochs=3,
    insert_act="pwlu",
    pwlu_intervals=8,
    pwlu_warmup_epochs=1,
    policy="mask",
    mask="0101",
    batch_size=64,
    lr=4e-3,
    weight_decay=0.05,
    seed=3,
)


def _pwlu_units(training):
    return {path: m for path, m in training.model.named_modules() if isinstance(m, PWLU)}


def _params(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_insert_kwargs_come_from_the_trial_config():
    cases = [
        (
            {"insert_act": "pwlu", "pwlu_intervals": 8, "granularity": "channel"},
            lambda m: isinstance(m, PWLU) and m.intervals == 8 and m.points.shape == (m.channels, 9),
        ),
        (
            {"insert_act": "la_hardsilu", "la_alpha": 0.1},
            lambda m: isinstance(m, LayerAct) and m.alpha == 0.1 and m.scale == "hardsigmoid",
        ),
        (
            {"insert_act": "prelu"},
            lambda m: isinstance(m, PReLU) and m.weight.shape == (m.num_parameters,) and m.num_parameters > 1,
        ),
        (
            {"insert_act": "lslu", "n": 2, "act": "silu", "granularity": "channel"},
            lambda m: isinstance(m, LSLU) and m.n == 2 and m.base == "silu" and m.theta.shape == (2, m.channels),
        ),
    ]
    for values, check in cases:
        cfg = TrialConfig(**{**FAST, **values})
        model, mask = build_network(cfg, num_classes=10, in_chans=3)
        chosen = [model.get_submodule(s.path) for s, bit in zip(list_sites(model), mask) if bit == "1"]
        assert mask == "0101" and len(chosen) == 2 and all(check(m) for m in chosen), values


def test_pwlu_stays_relu_through_its_warmup_then_realigns_and_learns():
    training = Training(TrialConfig(**{**PWLU_FAST, "pwlu_warmup_epochs": 2}))
    units = _pwlu_units(training)
    assert set(units) == {"stages.0.act", "stages.2.act"}
    initial = {path: _params(m) for path, m in units.items()}
    for epoch in (1, 2):
        training.run_epoch()
        for path, unit in units.items():
            # phase I: no gradient and no weight decay (AdamW, weight_decay 0.05), so not one value moved
            assert all(torch.equal(p, initial[path][name]) for name, p in _params(unit).items()), (epoch, path)
            assert not unit.realigned and int(unit.stats_batches) == epoch * training.steps_per_epoch
    stats = {path: (unit.running_mean.clone(), unit.running_std.clone()) for path, unit in units.items()}
    metrics = training.run_epoch()
    for path, unit in units.items():
        # realigned before epoch 3's first batch: no statistics were collected in epoch 3
        assert unit.realigned and int(unit.stats_batches) == 2 * training.steps_per_epoch
        mu, sigma = stats[path]
        # learned from eq. 6's start by AdamW, which moves a parameter by at most about lr per step
        bound = 1.5 * training.cfg.lr * training.steps_per_epoch
        for name, start in (("left", mu - 3 * sigma), ("right", mu + 3 * sigma)):
            moved = (getattr(unit, name).detach() - start).abs().item()
            assert 0 < moved <= bound, (path, name, moved, bound)
    assert metrics["val_acc"] > 85


@pytest.fixture(scope="module")
def pwlu_straight_run():
    training = Training(TrialConfig(**PWLU_FAST))
    metrics = [training.run_epoch() for _ in range(3)][-1]
    return metrics, {path: _params(m) for path, m in _pwlu_units(training).items()}


# saved in phase I (realign still due) / in phase II (must not realign again)
@pytest.mark.parametrize("saved_after", [1, 2])
def test_pwlu_phase_survives_a_checkpoint_restore(pwlu_straight_run, saved_after):
    expected, expected_params = pwlu_straight_run
    first = Training(TrialConfig(**PWLU_FAST))
    for _ in range(saved_after):
        first.run_epoch()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Training(TrialConfig(**PWLU_FAST))
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert all(unit.realigned == (saved_after >= 2) for unit in _pwlu_units(resumed).values())
    while not resumed.done:
        got = resumed.run_epoch()
    for key in ("train_loss", "val_loss", "val_acc"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    for path, unit in _pwlu_units(resumed).items():
        assert unit.realigned
        for name, p in _params(unit).items():
            assert torch.allclose(p, expected_params[path][name], rtol=1e-5, atol=1e-6), (path, name)
