"""The training loop of one trial, in plain torch (no Ray, no MLflow), so it can be tested and benchmarked alone.

    training = Training(TrialConfig(epochs=5))
    while not training.done:
        metrics = training.run_epoch()          # trains one epoch, evaluates, returns the epoch's metrics
    torch.save(training.state_dict(), path)     # everything needed to continue at the next epoch
"""
from __future__ import annotations

import fnmatch
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.activations import learnable_act_state, realign_pending
from trainables.config import TrialConfig
from trainables.data import batches, load_dataset
from trainables.insertion import apply_policy, list_sites, mask_of, select_sites
from trainables.models import build_model


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the trial ends with status ``diverged``."""


def pick_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but this trial sees no CUDA device")
    return torch.device(cfg.device)


# The trial config fields each inserted activation takes (activations not listed take none).
_INSERT_KWARGS = {
    "lslu": lambda cfg: {"n": cfg.n, "base": cfg.act, "granularity": cfg.granularity},
    "pwlu": lambda cfg: {"intervals": cfg.pwlu_intervals, "granularity": cfg.granularity},
    "la_silu": lambda cfg: {"alpha": cfg.la_alpha},
    "la_hardsilu": lambda cfg: {"alpha": cfg.la_alpha},
}


def insert_kwargs(cfg: TrialConfig) -> dict:
    """Arguments for the inserted activation, taken from the trial config."""
    build = _INSERT_KWARGS.get(cfg.insert_act)
    return build(cfg) if build else {}


def build_network(cfg: TrialConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, str]:
    """The trial's model with the policy applied, and the resulting insertion mask (one bit per site)."""
    model = build_model(cfg.model, num_classes=num_classes, in_chans=in_chans, act=cfg.act, dropout=cfg.dropout)
    sites = list_sites(model)
    if not cfg.inserts:
        return model, "0" * len(sites)
    selected = select_sites(sites, cfg.policy_spec)
    apply_policy(model, cfg.policy_spec, cfg.insert_act, **insert_kwargs(cfg))
    return model, mask_of(sites, selected)


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


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Training:
    """Everything one trial trains, built from its config; saved and restored as a whole."""

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.device = pick_device(cfg)
        _seed_everything(cfg.seed)
        self.data = load_dataset(cfg.dataset, cfg.image_size).to(self.device)
        self.model, self.mask = build_network(cfg, self.data.num_classes, self.data.in_chans)
        self.model.to(self.device)
        groups = param_groups(self.model, cfg.weight_decay)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        self.steps_per_epoch = math.ceil(len(self.data.train_y) / cfg.batch_size)
        total, warmup = cfg.epochs * self.steps_per_epoch, cfg.warmup_epochs * self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, warmup, total))
        self.generator = torch.Generator().manual_seed(cfg.seed)  # batch order
        self.epoch = 0  # epochs completed
        self.best_val_acc, self.best_epoch, self.min_val_loss = 0.0, 0, math.inf
        self.epoch_times: list[float] = []
        self.act_history: list[dict] = []  # per epoch: {"epoch": e, "state": learnable_act_state(model)}

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs

    @property
    def lslu_sites(self) -> int:
        return self.mask.count("1") if self.cfg.insert_act == "lslu" else 0

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, and return the epoch's metrics. Raises ``Diverged`` on a NaN/inf loss."""
        start = time.perf_counter()
        if self.epoch >= self.cfg.pwlu_warmup_epochs:
            # PWLU phase II starts once its warm-up epochs are done; only units still in phase I are reset, so
            # this is right after a checkpoint restore too (the phase is a buffer in the model's state dict)
            realign_pending(self.model)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        for x, y in batches(self.data.train_x, self.data.train_y, self.cfg.batch_size, self.generator):
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
        train_loss = loss_sum.item() / len(self.data.train_y)  # one sync per epoch, not per step
        self.epoch += 1
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {self.epoch}")
        val_loss, val_acc = self.evaluate()
        if not math.isfinite(val_loss):
            raise Diverged(f"validation loss became {val_loss} in epoch {self.epoch}")
        epoch_time = time.perf_counter() - start
        self.epoch_times.append(epoch_time)
        if val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
        self.min_val_loss = min(self.min_val_loss, val_loss)
        self.act_history.append({"epoch": self.epoch, "state": learnable_act_state(self.model)})
        return {
            "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc, "best_val_acc": self.best_val_acc,
            "min_val_loss": self.min_val_loss, "epoch_time_s": epoch_time, "lr": self.optimizer.param_groups[0]["lr"],
        }

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss (mean cross-entropy) and top-1 accuracy in %."""
        self.model.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in batches(self.data.val_x, self.data.val_y, 512):
            logits = self.model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = len(self.data.val_y)
        return loss_sum.item() / n, 100.0 * correct.item() / n

    def summary(self) -> dict[str, float]:
        """End-of-trial record."""
        return {
            "params_m": sum(p.numel() for p in self.model.parameters()) / 1e6,
            "lslu_sites": self.lslu_sites,
            "train_s_per_epoch": float(np.mean(self.epoch_times)) if self.epoch_times else 0.0,
            "best_epoch": self.best_epoch,
        }

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "min_val_loss": self.min_val_loss,
            "epoch_times": self.epoch_times, "act_history": self.act_history, "rng": _rng_state(self.generator),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_val_acc, self.best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
        self.min_val_loss, self.epoch_times, self.act_history = state["min_val_loss"], state["epoch_times"], state["act_history"]
        _set_rng_state(self.generator, state["rng"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
