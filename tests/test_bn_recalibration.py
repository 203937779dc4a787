"""BatchNorm recalibration before each evaluation (issue: fair early evaluation): only BatchNorm buffers change,
to the cumulative average of the batches' statistics, and an LSLU network's early val_acc stops being noise."""

import copy

import torch
from torch import nn

from trainables.activations import LSLU
from trainables.config import TrialConfig
from trainables.loop import Training
from trainables.recipe import recalibrate_bn

# the quickstart's recipe, LSLU n = 1 at every site of digits_cnn: the case where the running statistics lag most
QUICKSTART_LSLU = dict(
    model="digits_cnn",
    dataset="digits",
    image_size=16,
    insert_act="lslu",
    n=1,
    policy="all",
    optimizer="adamw",
    weight_decay=0.05,
    epochs=6,
    warmup_epochs=1,
    batch_size=64,
    seed=0,
)


def _batch_statistics_accuracy(training: Training) -> float:
    """Top-1 % with every BatchNorm normalizing by the validation batch's own statistics (train mode, one batch)."""
    model = copy.deepcopy(training.model).train()
    with torch.no_grad():
        ((x, y),) = training.data.val_batches(training.data.n_val, training.cfg.image_size)
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def test_recalibration_sets_running_stats_to_the_mean_of_the_batch_statistics_and_changes_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), LSLU(4, n=2), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))
    batches = [(torch.randn(6, 3, 8, 8) * (k + 1) + k, None) for k in range(3)]
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_bn(model, iter(batches)) == 3
    assert not model.training and model[1].momentum == 0.1  # momentum restored, the model left in eval mode
    # the expected statistics, computed independently: each batch's per-channel mean and unbiased variance at the
    # BN input (the second BN's input is computed with the first BN in train mode: it normalizes by the batch's
    # statistics)
    train_mode = copy.deepcopy(model).train()
    for bn_index in (1, 4):
        with torch.no_grad():
            inputs = [train_mode[:bn_index](x) for x, _ in batches]
        means = torch.stack([t.mean((0, 2, 3)) for t in inputs])
        variances = torch.stack([t.var((0, 2, 3), unbiased=True) for t in inputs])
        bn = model[bn_index]
        torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(bn.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
        assert bn.num_batches_tracked.item() == 3
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # exactly the BatchNorms' buffers changed: the two of the network and LSLU's own (after its depthwise conv)
    norms = [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms == ["1", "2.bn", "4"]
    assert changed == {f"{name}.{b}" for name in norms for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert recalibrate_bn(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), iter(batches)) == 0  # no BatchNorm: nothing run


def test_an_lslu_networks_epoch_two_val_acc_is_its_batch_statistics_accuracy_and_training_is_untouched():
    runs = {}
    for batches in (0, 8):
        training = Training(TrialConfig(**QUICKSTART_LSLU, bn_recalibrate_batches=batches))
        metrics = [training.run_epoch() for _ in range(2)][-1]
        runs[batches] = (metrics, _batch_statistics_accuracy(training), training)
    (off, off_batch_acc, _), (on, on_batch_acc, _) = runs[0], runs[8]
    assert abs(on["val_acc"] - on_batch_acc) <= 2.0, (on["val_acc"], on_batch_acc)
    # without recalibration the running statistics judge the same network far worse (the 19.8 % vs 97.2 %)
    assert off["val_acc"] < off_batch_acc - 20
    # recalibration draws its own batches: the training (batch order, weights, losses) is the same with it and without
    assert on["train_loss"] == off["train_loss"] and on_batch_acc == off_batch_acc


def test_recalibration_leaves_a_loader_datasets_batch_order_alone(tmp_path, monkeypatch):
    """A dataset read by a DataLoader (a user's factory), unaugmented: the recalibration's draw and the training share
    one loader, and the training's batch order must still come from the training's own generator only."""
    from tiny_datasets import write_factory_package

    monkeypatch.syspath_prepend(str(write_factory_package(tmp_path, "lslu_recal_data")))
    losses = {}
    for batches in (0, 2):
        cfg = TrialConfig(
            model="digits_cnn",
            dataset="lslu_recal_data.data:build",
            data_args={"n": 48, "classes": 3},
            image_size=12,
            augment=False,
            workers=0,
            batch_size=8,
            epochs=3,
            warmup_epochs=0,
            n=1,
            bn_recalibrate_batches=batches,
        )
        training = Training(cfg)
        losses[batches] = [training.run_epoch()["train_loss"] for _ in range(3)]
    assert losses[2] == losses[0]
