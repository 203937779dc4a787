"""Mixed precision: ``amp`` takes bf16 and fp16 besides true/false/auto; fp16 alone steps through a gradient scaler,
which unscales before clipping and travels in the checkpoint; a CPU trial trains in float32 whatever the setting.
The CUDA side (autocast in each dtype, the scaler in a real run) is in tests/test_cuda.py."""

import io

import pytest
import torch

from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.loop import Training, amp_dtype

FAST = dict(
    epochs=1,
    n=1,
    policy="mask",
    mask="0101",
    batch_size=64,
    lr=4e-3,
    seed=3,
    train_samples=512,
    val_samples=128,
    device="cpu",
)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # a device object needs no CUDA to exist


@pytest.mark.parametrize("value", ["fp16", "bf16", "auto", True, False, "true", "false"])
def test_the_config_takes_each_amp_setting(value):
    assert TrialConfig.from_flat({"amp": value}).amp in ("fp16", "bf16", "auto", True, False)


def test_an_unknown_amp_setting_names_the_key():
    with pytest.raises(ConfigError) as err:
        TrialConfig.from_flat({"amp": "fp8"})
    assert err.value.key.startswith("amp")


@pytest.mark.parametrize(
    "setting, on_cuda", [("fp16", "fp16"), ("bf16", "bf16"), (True, "bf16"), ("auto", "bf16"), (False, "off")]
)
def test_amp_dtype_is_bf16_by_default_on_cuda_and_off_on_cpu(setting, on_cuda):
    assert amp_dtype(setting, CUDA) == on_cuda
    assert amp_dtype(setting, CPU) == "off"


@pytest.mark.parametrize("setting", ["fp16", "bf16", True, "auto"])
def test_a_cpu_trial_trains_in_float32_without_a_scaler(setting):
    training = Training(TrialConfig(**FAST, amp=setting))
    assert training.amp_dtype == "off" and training.scaler is None
    assert training.state_dict()["scaler"] is None


def _trained(scaler: bool) -> Training:
    # clip_grad 0.05 clips every step: clipping the scaled gradients (2^16 too large) would change the run
    training = Training(TrialConfig(**FAST, clip_grad=0.05))
    if scaler:  # what amp: fp16 builds on CUDA, here on the CPU: the same steps, in float32
        training.scaler = torch.amp.GradScaler("cpu")
    training.run_epoch()
    return training


def test_the_scaled_step_unscales_before_clipping_and_matches_the_plain_step():
    """Scaling the loss by a power of two and the gradients back is exact in float32: with the unscale before the
    clipping, the scaled run is the plain run."""
    plain, scaled = _trained(False), _trained(True)
    assert scaled.scaler.get_scale() == 2.0**16  # no overflow, fewer than growth_interval steps: unchanged
    for p, q in zip(plain.model.parameters(), scaled.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_the_scaler_state_travels_in_the_checkpoint():
    trained = _trained(True)
    trained.scaler.update(1024.0)  # a scale the fresh scaler does not have
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    resumed = Training(TrialConfig(**FAST, clip_grad=0.05))
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.scaler.get_scale() == 1024.0
