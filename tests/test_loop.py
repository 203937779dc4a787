"""The plain-torch loop: it learns digits, it is reproducible, and a restored state continues exactly."""
import io

import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.loop import Diverged, Training, warmup_cosine

FAST = dict(epochs=3, n=1, policy="mask", mask="0101", batch_size=64, lr=4e-3, seed=3)


def test_digits_split_and_shapes():
    data = load_dataset("digits", 16)
    assert data.train_x.shape == (1437, 3, 16, 16) and data.val_x.shape == (360, 3, 16, 16)
    assert data.num_classes == 10 and set(data.val_y.tolist()) == set(range(10))
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3


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
    cfg = TrialConfig(model="vanillanet_5", width=0.25, cifar_stem=True, epochs=3, deep_train_epochs=2, n=2, policy="stages:1",
                      train_samples=128, val_samples=64, batch_size=64)
    training = Training(cfg)
    seen = []
    for _ in range(3):
        training.run_epoch()
        seen.append(training.model.stem_act.act_learn)
    assert seen == [0.0, 0.5, 1.0]  # set before each epoch: epoch / deep_train_epochs, capped at 1
    assert training.mask == "0100" and training.lslu_sites == 1
    record = training.summary()
    assert record["params_m"] < sum(p.numel() for p in training.model.parameters()) / 1e6  # deploy form: 1×1 convs merged
    assert record["flops_g"] > 0 and record["latency_ms"] > 0


def test_subsets_take_the_first_images_of_each_split():
    training = Training(TrialConfig(**{**FAST, "train_samples": 100, "val_samples": 50}))
    full = load_dataset("digits", 16)
    assert len(training.data.train_y) == 100 and len(training.data.val_y) == 50
    assert torch.equal(training.data.train_y, full.train_y[:100])
