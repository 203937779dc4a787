"""The training loop of one trial, in plain torch (no Ray, no MLflow), so it can be tested and benchmarked alone.

    training = Training(TrialConfig(epochs=5))
    while not training.done:
        metrics = training.run_epoch()          # trains one epoch, evaluates, returns the epoch's metrics
    torch.save(training.state_dict(), path)     # everything needed to continue at the next epoch

Each epoch: every module's ``on_epoch_start`` hook runs (the activation contract, DESIGN.md §2), the model trains
(bf16 autocast, or fp16 with a gradient scaler, and channels_last on CUDA), the model and its EMA are evaluated
(BatchNorm statistics recalibrated first); the best of both is the trial's best. A NaN/inf loss raises
``Diverged``; ``early_stop_patience`` epochs without a better accuracy end the trial early.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time

import numpy as np
import torch
from torch import nn

from trainables.activations import config_kwargs, learnable_act_state, start_epoch, trial_config
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.insertion import SiteTrace, apply_policy, trace_sites
from trainables.loader_data import LoaderData
from trainables.metrics import lslu_sites
from trainables.models import build_model, model_config_kwargs
from trainables.models.stats import architecture_stats
from trainables.recipe import EMA, TrainLoss, make_mixup, make_optimizer, make_scheduler, recalibrate_bn

EVAL_BATCH = 512


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the trial ends with status ``diverged``."""


def pick_device(cfg: TrialConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but this trial sees no CUDA device")
    return torch.device(cfg.device)


def _on_cuda(setting, device: torch.device) -> bool:
    """``auto`` means: on CUDA only."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(setting, device: torch.device) -> str:
    """What the trial's ``amp`` setting trains with on ``device``: ``bf16``, ``fp16`` or ``off``. Autocast is for CUDA
    only: a CPU trial trains in float32 whatever the setting (``true`` and ``auto`` mean bf16)."""
    if device.type != "cuda" or setting is False:
        return "off"
    return "fp16" if setting == "fp16" else "bf16"


def insert_kwargs(cfg: TrialConfig) -> dict:
    """Arguments for the inserted activation: the trial-config fields its registration names."""
    return config_kwargs(cfg.insert_act, cfg)


def model_kwargs(cfg: TrialConfig) -> dict:
    """Constructor arguments for the trial's model: the common ones and the trial-config fields its registration
    names."""
    return {
        "cifar_stem": cfg.cifar_stem,
        "width": cfg.width,
        "act": cfg.act,
        "dropout": cfg.dropout,
        "pretrained": cfg.pretrained,
        "pretrained_file": cfg.pretrained_file,
        "model_args": cfg.model_args,
        **model_config_kwargs(cfg.model, cfg),
    }


def build_network(cfg: TrialConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, str]:
    """The trial's model with the policy applied, and the resulting insertion mask (one bit per site)."""
    model, mask, _ = traced_network(cfg, num_classes, in_chans)
    return model, mask


def traced_network(cfg: TrialConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, str, SiteTrace]:
    """``build_network`` and the site trace of the model as built (traced once: a trace is a forward pass; the sites
    keep their paths, stages and layouts when the policy replaces their modules)."""
    with trial_config(cfg):  # activations the model builds by name (`act`) take their trial-config fields too
        model = build_model(cfg.model, num_classes=num_classes, in_chans=in_chans, **model_kwargs(cfg))
    model.lslu_input_size = (in_chans, cfg.image_size, cfg.image_size)  # what list_sites traces it with from now on
    trace = trace_sites(model)
    if not cfg.inserts:
        return model, "0" * len(trace.sites), trace
    replaced = set(apply_policy(model, cfg.insertion_policy, cfg.insert_act, sites=trace.sites, **insert_kwargs(cfg)))
    return model, "".join("1" if s.path in replaced else "0" for s in trace.sites), trace


class Training:
    """Everything one trial trains, built from its config; saved and restored as a whole."""

    run_title: str | None = None  # the MLflow run's name (None: the trial's own, ``tracking.run_name``)
    logs_model = True  # a completed trial logs its deploy form as an MLflow model

    def __init__(self, cfg: TrialConfig):
        self.cfg = cfg
        self.device = pick_device(cfg)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)  # recorded on the run (tag amp_dtype)
        # fp16's narrow range underflows small gradients: the loss is scaled up before backward, the gradients down
        # before the step (skipped where they overflowed); bf16 has float32's range and needs none
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == "fp16" else None
        self.channels_last = _on_cuda(cfg.channels_last, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a trial's shapes are fixed: let cuDNN pick its fastest convolutions
        _seed_everything(cfg.seed)
        data = load_dataset(
            cfg.dataset, cfg.image_size, cfg.data_dir, cfg.download, cfg.train_samples, cfg.val_samples, cfg.data_args
        )
        if isinstance(data, LoaderData):
            data.workers = cfg.workers
        self.data = data.head(cfg.train_samples, cfg.val_samples).to(self.device)
        self.model, self.mask, self.site_trace = self._network(cfg, self.data.num_classes, self.data.in_chans)
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        self.optimizer = make_optimizer(cfg, self.model)
        self.steps_per_epoch = math.ceil(self.data.n_train / cfg.batch_size)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.criterion = TrainLoss(cfg)
        self.mixup = make_mixup(cfg, self.data.num_classes)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.deploys_ema = False  # the EMA scored higher in the last evaluation: its weights are the deploy form's
        # params_m, flops_g, latency_ms of the deploy form: architecture only, so measured before training, once per
        # architecture in this worker
        self.stats = architecture_stats(self.model, (self.data.in_chans, cfg.image_size, cfg.image_size))
        self.generator = torch.Generator().manual_seed(cfg.seed)  # batch order and augmentation
        self.epoch = 0  # epochs completed
        self.best_val_acc, self.best_epoch, self.min_val_loss = 0.0, 0, math.inf
        self.stop_reason = ""  # set when early stopping ends the trial
        self.epoch_times: list[float] = []
        self.act_history: list[dict] = []  # per epoch: {"epoch": e, "state": learnable_act_state(model)}

    def _network(self, cfg: TrialConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, str, SiteTrace]:
        """The model, its mask and its site trace (``traced_network``; the one-shot supernet builds its own)."""
        return traced_network(cfg, num_classes, in_chans)

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs or bool(self.stop_reason)

    @property
    def lslu_sites(self) -> int:
        return lslu_sites(self.cfg, self.mask)

    def _models(self) -> list[nn.Module]:
        return [self.model] + ([self.ema.module] if self.ema else [])

    def _autocast(self):
        if self.amp_dtype == "off":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=AUTOCAST_DTYPES[self.amp_dtype])

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, evaluate, and return the epoch's metrics. Raises ``Diverged`` on a NaN/inf loss."""
        start = time.perf_counter()
        for path in start_epoch(self.model, self.epoch, self.cfg.epochs):
            if self.ema is not None:  # the average restarts from the module's new state (PWLU's realignment, λ)
                self.ema.module.get_submodule(path).load_state_dict(self.model.get_submodule(path).state_dict())
        train_loss = self._train_epoch()
        self.epoch += 1
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {self.epoch}")
        metrics = {"train_loss": train_loss, **self._evaluate_epoch()}
        epoch_time = time.perf_counter() - start
        self.epoch_times.append(epoch_time)
        self.act_history.append({"epoch": self.epoch, "state": learnable_act_state(self.model)})
        metrics.update(
            best_val_acc=self.best_val_acc,
            min_val_loss=self.min_val_loss,
            epoch_time_s=epoch_time,
            lr=self.optimizer.param_groups[0]["lr"],
        )
        return metrics

    def _train_epoch(self) -> float:
        """One pass over the training data; the mean training loss."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        batches = self.data.train_batches(
            self.cfg.batch_size, self.generator, self.cfg.image_size, self.cfg.augment, self.channels_last
        )
        for x, y in batches:
            if self.mixup is not None:
                if len(y) % 2:  # mixup pairs images within the batch
                    x, y = x[:-1], y[:-1]
                x, y = self.mixup(x, y)
            with self._autocast():
                loss = self.criterion(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is None:
                loss.backward()
                self._clip_grad()
                self.optimizer.step()
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)  # clipping sees the true gradients
                self._clip_grad()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            loss_sum += loss.detach() * len(y)
            seen += len(y)
        return loss_sum.item() / max(seen, 1)  # one device sync per epoch, not per step

    def _clip_grad(self) -> None:
        if self.cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)

    def _evaluate_epoch(self) -> dict[str, float]:
        """Validation of the model (and its EMA) after an epoch; updates the best accuracy, the lowest loss and early
        stopping."""
        for model in self._models():
            self.recalibrate_bn(model)
        metrics = {}
        metrics["val_loss"], metrics["val_acc"] = self.evaluate(self.model)
        if not math.isfinite(metrics["val_loss"]):
            raise Diverged(f"validation loss became {metrics['val_loss']} in epoch {self.epoch}")
        accs, losses = [metrics["val_acc"]], [metrics["val_loss"]]
        if self.ema is not None:
            metrics["ema_val_loss"], metrics["ema_val_acc"] = self.evaluate(self.ema.module)
            accs.append(metrics["ema_val_acc"])
            losses.append(metrics["ema_val_loss"])
            self.deploys_ema = metrics["ema_val_acc"] > metrics["val_acc"]  # best_val_acc takes the better one too
        if max(accs) > self.best_val_acc:
            self.best_val_acc, self.best_epoch = max(accs), self.epoch
        self.min_val_loss = min(self.min_val_loss, *[v for v in losses if math.isfinite(v)])
        patience = self.cfg.early_stop_patience
        if patience and self.epoch - self.best_epoch >= patience and self.epoch < self.cfg.epochs:
            self.stop_reason = (
                f"early stopping: no better val_acc for {patience} epochs "
                f"(best {self.best_val_acc:.2f} at epoch {self.best_epoch})"
            )
        return metrics

    @property
    def deployed_network(self) -> nn.Module:
        """The network a finished trial deploys (its MLflow model, ``export``): its EMA where that scored higher in
        the last evaluation (``model_ema_final.pt``), else the model itself (``model_final.pt``)."""
        return self.ema.module if self.deploys_ema else self.model

    def recalibrate_bn(self, model: nn.Module) -> int:
        """``model``'s BatchNorm statistics recomputed on the trial's first ``bn_recalibrate_batches`` training batches
        (a fixed, unaugmented draw: the same images at every evaluation, and the training's batch order untouched)."""
        if not self.cfg.bn_recalibrate_batches:
            return 0
        draw = torch.Generator().manual_seed(self.cfg.seed)
        batches = self.data.train_batches(self.cfg.batch_size, draw, self.cfg.image_size, False, self.channels_last)
        return recalibrate_bn(model, itertools.islice(batches, self.cfg.bn_recalibrate_batches), self._autocast)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Validation loss (mean cross-entropy) and top-1 accuracy in %."""
        model.eval()
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for x, y in self.data.val_batches(EVAL_BATCH, self.cfg.image_size, self.channels_last):
            with self._autocast():
                logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        n = self.data.n_val
        return loss_sum.item() / n, 100.0 * correct.item() / n

    def summary(self) -> dict[str, float]:
        """End-of-trial record: the papers' params_m, flops_g, latency_ms (deploy form, batch 1) and training
        figures."""
        return {
            **self.stats,
            "lslu_sites": self.lslu_sites,
            "train_s_per_epoch": float(np.mean(self.epoch_times)) if self.epoch_times else 0.0,
            "best_epoch": self.best_epoch,
            "best_val_acc": self.best_val_acc,
            "min_val_loss": self.min_val_loss,
        }

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "min_val_loss": self.min_val_loss,
            "stop_reason": self.stop_reason,
            "epoch_times": self.epoch_times,
            "act_history": self.act_history,
            "rng": _rng_state(self.generator),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):  # .get: a checkpoint from before fp16 has none
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best_val_acc, self.best_epoch = state["epoch"], state["best_val_acc"], state["best_epoch"]
        self.min_val_loss, self.stop_reason = state["min_val_loss"], state["stop_reason"]
        self.epoch_times, self.act_history = state["epoch_times"], state["act_history"]
        _set_rng_state(self.generator, state["rng"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "batches": generator.get_state(),
    }
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
