"""What the papers' tables report about a network: parameters, multiply–accumulates, batch-1 latency.

All three are measured on the deploy form (``fuse_model``): VanillaNet's published 15.52 M parameters
are its deploy count, and latency is an inference figure.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from trainables.activations.lslu.dispatch import eager_kernels
from trainables.insertion import is_site_module


def fuse_model(model: nn.Module, architecture_only: bool = False) -> nn.Module:
    """An eval-mode deploy copy: the model's own ``fuse()`` where it has one and can (VanillaNet after deep
    training), and every fusable activation (LSLU, VanillaNet's) with its BatchNorm folded.

    ``architecture_only``: the copy is for counting and timing, so VanillaNet is fused as if deep training were over
    (its outputs then differ from the model's; its shape, parameter count and cost are the deploy form's)."""
    deploy = copy.deepcopy(model).eval()
    if architecture_only and callable(getattr(deploy, "set_act_learn", None)):
        deploy.set_act_learn(1.0)  # VanillaNet's deploy architecture, whatever stage its deep training is at
    if callable(getattr(deploy, "fuse", None)):
        try:
            deploy.fuse()
        except ValueError:
            pass  # e.g. VanillaNet mid deep-training: its convs cannot merge yet; its activations still fuse below
    for module in deploy.modules():
        if module is not deploy and is_site_module(module) and callable(getattr(module, "fuse", None)):
            module.fuse()
    return deploy


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply–accumulates of one forward pass at batch 1, in G (torch counts two FLOPs per MAC). LSLU's own kernels
    are off while counting: the counter sees aten's ops only, and would miss their depthwise convolutions."""
    device = next(model.parameters()).device
    x = torch.zeros(1, *input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, eager_kernels():
        model(x)
    return counter.get_total_flops() / 2 / 1e9


@torch.no_grad()
def latency_ms(model: nn.Module, input_size: tuple[int, int, int], runs: int = 20, warmup: int = 3) -> float:
    """The shortest wall time of a batch-1 forward pass over ``runs``, in ms. A trial measures it while other trials
    train on the same machine: their load lengthens most passes, not the shortest (ResNet-18 with LSLU, one thread, on
    two cores beside two busy processes: the median rose 40-50 %, the minimum 2-6 %), so a latency objective
    compares architectures, not what else was running."""
    device = next(model.parameters()).device
    x = torch.randn(1, *input_size, device=device)
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * min(times)


def model_stats(model: nn.Module, input_size: tuple[int, int, int], runs: int = 20) -> dict[str, float]:
    """``params_m``, ``flops_g`` (multiply–accumulates, as the papers count) and ``latency_ms`` of the deploy form.

    They depend on the architecture alone, so a trial measures them once, before it trains."""
    deploy = fuse_model(model, architecture_only=True)
    return {
        "params_m": sum(p.numel() for p in deploy.parameters()) / 1e6,
        "flops_g": count_macs(deploy, input_size),
        "latency_ms": latency_ms(deploy, input_size, runs=runs),
    }


_BY_ARCHITECTURE: dict[tuple, dict[str, float]] = {}
_KEEP = 256  # architectures remembered per process


def architecture_stats(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """``model_stats``, measured once per architecture in this process: a reused actor's next trial of the same
    network (a sweep over lr or dropout, say) takes the same figures instead of fusing and timing it again.
    The architecture is the model's module tree as printed (every layer with its sizes) and its parameter shapes."""
    device = next(model.parameters()).device
    key = (repr(model), tuple(tuple(p.shape) for p in model.parameters()), tuple(input_size), str(device))
    if key not in _BY_ARCHITECTURE:
        if len(_BY_ARCHITECTURE) >= _KEEP:
            _BY_ARCHITECTURE.pop(next(iter(_BY_ARCHITECTURE)))  # the oldest
        _BY_ARCHITECTURE[key] = model_stats(model, input_size)
    return dict(_BY_ARCHITECTURE[key])
