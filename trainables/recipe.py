"""The pieces of the papers' training recipes the loop assembles from a trial config (DESIGN.md §4):
optimizer, learning-rate schedule, loss, mixup/cutmix, and an EMA of the weights."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import TrialConfig


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters some module exempts from weight decay through ``no_weight_decay()``.

    timm's convention, applied to every submodule (timm asks only the root model): each learnable
    activation lists its own shape parameters (LSLU's θ/ω, PWLU's, PReLU's slopes). Names may be globs.
    """
    names = set()
    for path, module in model.named_modules():
        exempt = getattr(module, "no_weight_decay", None)
        if callable(exempt):
            names.update(f"{path}.{name}" if path else name for name in exempt())
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (every 1-D parameter) nor on what ``no_weight_decay()`` exempts."""
    exempt = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempted = p.ndim <= 1 or any(fnmatch.fnmatchcase(name, pattern) for pattern in exempt)
        (no_decay if exempted else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: TrialConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "lamb":  # the LSLU paper's optimizer (timm's LAMB, as VanillaNet's recipe)
        from timm.optim import Lamb

        return Lamb(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(cfg: TrialConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))


class TrainLoss(nn.Module):
    """``ce``: cross-entropy; ``bce``: timm's binary cross-entropy (as the LSLU paper trains). Label smoothing for both;
    with mixup/cutmix the targets arrive already mixed and smoothed."""

    def __init__(self, cfg: TrialConfig):
        super().__init__()
        self.kind, self.smoothing = cfg.loss, cfg.label_smoothing
        self.bce = None
        if cfg.loss == "bce":
            from timm.loss import BinaryCrossEntropy  # timm costs a worker ~1 s to import: only where it is used

            self.bce = BinaryCrossEntropy(smoothing=cfg.label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.bce is not None:
            return self.bce(logits, target)
        if target.dim() == 2:  # soft targets from mixup
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)


def make_mixup(cfg: TrialConfig, num_classes: int):
    """timm's Mixup/CutMix when either alpha is positive, else None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )


class EMA:
    """An exponential moving average of a model's parameters and floating buffers (other buffers are copied).

    Not timm's ModelEmaV3: that walks ``state_dict()``, which holds non-tensor extra state in VanillaNet.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p, model_p = list(self.module.parameters()), [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, model_p, 1.0 - self.decay)
        for ema_b, model_b in zip(self.module.buffers(), model.buffers()):
            if ema_b.is_floating_point():
                ema_b.lerp_(model_b, 1.0 - self.decay)
            else:
                ema_b.copy_(model_b)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, autocast=contextlib.nullcontext) -> int:
    """Recompute every BatchNorm's running mean and variance from ``batches`` with the model's current weights: the
    cumulative average over the batches (as ``torch.optim.swa_utils.update_bn``), nothing else changes.

    Early in training the running statistics lag far behind the weights (an LSLU network's especially), so an
    evaluation with them judges a good network as poor; ASHA and TPE decide on those early evaluations. The model
    is left in eval mode; returns how many batches were used (0: the model has no BatchNorm, nothing was run)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None: a cumulative average over the batches seen since the reset
    model.eval()  # only the BatchNorms run in training mode: no dropout, and modules that learn from their inputs
    for m in norms:  # in training mode (PWLU's phase-I statistics) learn nothing here
        m.train()
    used = 0
    try:
        for x, _ in batches:
            with autocast():
                model(x)
            used += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.eval()
    return used
