"""The CUDA path: the Triton LSLU series, every activation, bf16 autocast and channels_last in a real training run,
fp16 autocast with its gradient scaler,
an out-of-memory batch, and the deploy form replayed from a CUDA graph. Skipped without a CUDA device (CI has none); run
on a GPU machine with

    python -m pytest --noconftest tests/test_cuda.py
"""

import copy

import pytest
import torch
from lslu_factory import randomized_lslu

from benchmarks.common import cuda_graph_replay
from trainables.activations import create_act, list_acts
from trainables.activations.lslu.dispatch import series as lslu_series
from trainables.activations.lslu.reference import series_forward
from trainables.config import TrialConfig
from trainables.insertion import apply_policy
from trainables.loop import Training
from trainables.models import build_model
from trainables.models.stats import fuse_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("base", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("n", [1, 4])
def test_triton_series_matches_autograd_on_the_eager_series(base, channel, dtype, tol, layout, n):
    torch.manual_seed(0)
    c = 24  # tiles are not multiples of it: masked lanes are exercised
    x = torch.randn(6, c, 13, 11, device=CUDA).to(dtype).contiguous(memory_format=layout).requires_grad_()
    shape = (n, c) if channel else (n,)
    theta = (torch.rand(shape, device=CUDA) + 0.5).requires_grad_()
    omega = (torch.rand(shape, device=CUDA) - 0.5).requires_grad_()
    g = torch.randn_like(x)
    ref = series_forward(x.float(), theta, omega, base, channel)  # float32 autograd on the eager series
    ref_grads = torch.autograd.grad((ref * g.float()).sum(), (x, theta, omega))
    out = lslu_series(x, theta, omega, base, channel)  # the Triton kernels
    grads = torch.autograd.grad((out.float() * g.float()).sum(), (x, theta, omega))
    assert out.dtype == dtype
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()  # noqa: E731
    assert rel(out, ref) < tol
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) < tol * 3


@pytest.mark.parametrize("name", list_acts())
@pytest.mark.parametrize("train", [True, False])
def test_every_activation_agrees_on_cuda_and_cpu(name, train):
    torch.manual_seed(0)
    cpu = create_act(name, channels=8).train(train)
    gpu = create_act(name, channels=8)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to(CUDA).train(train)
    x = torch.randn(4, 8, 10, 10)
    assert torch.allclose(gpu(x.to(CUDA)).cpu(), cpu(x), rtol=1e-4, atol=1e-5)


def test_a_training_run_uses_bf16_and_channels_last_on_cuda_and_learns():
    # 45 steps an epoch: BatchNorm's running statistics need some hundred steps before eval mode matches training
    cfg = TrialConfig(
        model="resnet18",
        cifar_stem=True,
        policy="downsampling",
        n=3,
        image_size=32,
        epochs=5,
        batch_size=32,
        lr=1e-3,
        warmup_epochs=1,
        ema_decay=0.9,
    )
    training = Training(cfg)
    assert training.device.type == "cuda" and training.amp_dtype == "bf16" and training.channels_last
    assert training.scaler is None
    assert training.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    while not training.done:
        metrics = training.run_epoch()
        print({k: round(v, 4) for k, v in metrics.items()})
    assert training.best_val_acc > 80, metrics
    print(
        f"resnet18 LSLU(downsampling) on {torch.cuda.get_device_name()}: epoch {metrics['epoch_time_s']:.2f}s, "
        f"val_acc {metrics['val_acc']:.1f}, record {training.summary()}"
    )


def test_fp16_trains_through_the_gradient_scaler_and_its_state_is_checkpointed():
    cfg = TrialConfig(
        model="resnet18",
        cifar_stem=True,
        policy="downsampling",
        n=3,
        image_size=32,
        epochs=3,
        batch_size=32,
        lr=1e-3,
        warmup_epochs=1,
        amp="fp16",
        clip_grad=1.0,
    )
    training = Training(cfg)
    assert training.amp_dtype == "fp16" and isinstance(training.scaler, torch.amp.GradScaler)
    with training._autocast():
        assert training.model(torch.randn(2, 1, 32, 32, device=CUDA)).dtype == torch.float16
    while not training.done:
        training.run_epoch()
    assert training.best_val_acc > 50 and training.scaler.get_scale() > 0
    resumed = Training(cfg)
    resumed.load_state_dict(training.state_dict())
    assert resumed.scaler.get_scale() == training.scaler.get_scale()
    assert training.state_dict()["scaler"]["scale"] == training.scaler.get_scale()


def test_pwlu_realigns_and_learns_on_cuda():
    training = Training(TrialConfig(insert_act="pwlu", pwlu_warmup_epochs=1, epochs=3, n=1, lr=4e-3))
    while not training.done:
        training.run_epoch()
    assert training.best_val_acc > 80


def test_out_of_memory_raises_the_error_the_trainable_reports_as_oom():
    cfg = TrialConfig(
        model="resnet50",
        dataset="synthetic",
        image_size=224,
        train_samples=4096,
        val_samples=8,
        batch_size=4096,
        epochs=1,
        warmup_epochs=0,
        policy="none",
    )
    training = Training(cfg)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        training.run_epoch()


@pytest.mark.parametrize("policy", ["downsampling", "all"])
def test_the_deploy_form_replays_from_a_cuda_graph(policy):
    """The fused network (LSLU's Triton series, its folded depthwise conv) neither syncs with the host nor branches on
    data there: it captures in a CUDA graph, and a replay on new input equals the eager forward (bench_model's
    graph_ms)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, cifar_stem=True)
    apply_policy(model, policy, "lslu", n=3)
    deploy = fuse_model(model.eval()).to(CUDA, memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 32, device=CUDA).contiguous(memory_format=torch.channels_last)
    replay = cuda_graph_replay(deploy, x)
    for _ in range(2):
        x = torch.randn_like(x)
        with torch.inference_mode():
            want = deploy(x)
        torch.testing.assert_close(replay(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_triton_site_equals_the_series_and_conv_it_replaces(monkeypatch, granularity, dtype, tol, layout):
    """``LSLU_KERNEL=site`` (lslu_site_triton.py): the same output and gradients as the Triton series followed by
    cuDNN's depthwise conv, in training (BatchNorm inside the site's function, which keeps x alone of the site's size)
    and in the deploy form."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference conv in true float32
    ref = randomized_lslu("relu", granularity, n=3, channels=24, seed=1, theta=(-1.5, 1.5)).float().to(CUDA, dtype)
    site = copy.deepcopy(ref)
    x = torch.randn(6, 24, 13, 11, device=CUDA).to(dtype).contiguous(memory_format=layout).requires_grad_()
    g = torch.randn_like(x)
    outs, grads = [], []
    for kernel, module in (("triton", ref), ("site", site)):
        monkeypatch.setenv("LSLU_KERNEL", kernel)
        out = module(x)
        if kernel == "site":
            big = [t for t in out.grad_fn.saved_tensors if t.shape == x.shape]
            assert type(out.grad_fn).__name__ == "SeriesConvBatchNormBackward", out.grad_fn
            assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), "only x is kept"
        outs.append(out.float())
        grads.append(torch.autograd.grad((out.float() * g.float()).sum(), (x, *module.parameters())))
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * 10)
    for kernel, module in (("triton", ref), ("site", site)):
        monkeypatch.setenv("LSLU_KERNEL", kernel)
        module.eval().fuse()
        with torch.inference_mode():
            outs.append(module(x).float())
    torch.testing.assert_close(outs[3], outs[2], rtol=tol, atol=tol)
