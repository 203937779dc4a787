"""The one-shot supernet of the insertion search (DESIGN.md §6 "One-shot insertion search"), in plain torch.

Every eligible site holds the base activation and the inserted one (LSLU) side by side (``SiteChoice``); a mask (one
bit per site, forward order, as a trial's policy ``mask``) says which of the two each site runs. ``SupernetTraining``
is a ``loop.Training`` whose every training step runs one mask drawn uniformly from the feasible ones (single-path
sampling: at most ``max_sites`` sites on), so all masks' weights train together; afterwards ``evaluate_mask`` scores
any mask with the inherited weights, its BatchNorm statistics recalibrated for that mask first.

    training = SupernetTraining(TrialConfig(model="resnet18", insert_act="lslu", epochs=40), max_sites=6)
    while not training.done:
        training.run_epoch()
    val_loss, val_acc = training.evaluate_mask("0101…")
    plain = extract(training.model, "0101…")      # the plain network of that mask, with the supernet's weights
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.activations import ChannelsLast, create_act
from trainables.config import TrialConfig
from trainables.insertion import SiteTrace, sites_for, trace_sites
from trainables.loop import Training, insert_kwargs, model_kwargs
from trainables.models import build_model
from trainables.activations import trial_config


class SiteChoice(nn.Module):
    """One site of the supernet: ``base`` (the model's own activation) or ``inner`` (the inserted one), as ``on``
    says. The inserted activation is ``inner`` so that its θ/ω are reported under the site's path, as at a
    ``ChannelsLast`` adapter (``activations.introspect``)."""

    is_site_adapter = True  # what the activation contract asks of ``inner`` is reported under this module's path

    def __init__(self, base: nn.Module, inner: nn.Module):
        super().__init__()
        self.base, self.inner = base, inner
        self.on = False  # False: the base activation runs; True: the inserted one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if self.on else self.base(x)

    def chosen(self) -> nn.Module:
        return self.inner if self.on else self.base


def supernet_sites(model: nn.Module) -> dict[str, SiteChoice]:
    return {path: m for path, m in model.named_modules() if isinstance(m, SiteChoice)}


def build_supernet(cfg: TrialConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, str, SiteTrace]:
    """The trial's model with a ``SiteChoice`` at every site the inserted activation may go to (policy ``all``:
    the eligible ones), its eligibility mask (1: a choice is there) and the site trace of the plain model."""
    with trial_config(cfg):
        model = build_model(cfg.model, num_classes=num_classes, in_chans=in_chans, **model_kwargs(cfg))
    model.lslu_input_size = (in_chans, cfg.image_size, cfg.image_size)
    trace = trace_sites(model)
    chosen = {s.path for s in sites_for(trace.sites, "all", cfg.insert_act)}
    for site in trace.sites:
        if site.path not in chosen:
            continue
        parent_path, _, name = site.path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        inserted = create_act(cfg.insert_act, channels=site.channels, **insert_kwargs(cfg))
        setattr(
            parent,
            name,
            SiteChoice(getattr(parent, name), ChannelsLast(inserted) if site.layout == "nhwc" else inserted),
        )
    return model, "".join("1" if s.path in chosen else "0" for s in trace.sites), trace


def set_mask(model: nn.Module, sites: list, mask: str) -> None:
    """Switch each ``SiteChoice`` of ``model`` to its bit of ``mask`` (one bit per site of ``sites``); a bit set where
    the supernet has no choice (an ineligible site) is a ValueError."""
    if len(mask) != len(sites):
        raise ValueError(f"mask {mask!r} has {len(mask)} bits but the model has {len(sites)} activation sites")
    choices = supernet_sites(model)
    for site, bit in zip(sites, mask):
        if site.path in choices:
            choices[site.path].on = bit == "1"
        elif bit == "1":
            raise ValueError(
                f"mask {mask!r} turns on site {site.index} ({site.path}), which has no choice: "
                f"{site.reason or 'not eligible'}"
            )


def extract(model: nn.Module, mask: str | None = None, sites: list | None = None) -> nn.Module:
    """A plain network (no ``SiteChoice``) with the supernet's weights: each site keeps the module its bit (or, without
    a mask, its current choice) selects. The supernet itself is left as it is."""
    import copy

    plain = copy.deepcopy(model)
    if mask is not None:
        set_mask(plain, sites, mask)
    for path, choice in supernet_sites(plain).items():
        parent_path, _, name = path.rpartition(".")
        parent = plain.get_submodule(parent_path) if parent_path else plain
        setattr(parent, name, choice.chosen())
    return plain


class MaskSampler:
    """Uniform over the feasible masks: those that turn on at most ``max_sites`` of the ``eligible`` sites. The number
    of sites on is drawn with weight C(k, c), then which ones, so every feasible mask is equally likely."""

    def __init__(self, eligible: str, max_sites: int | None, generator: torch.Generator):
        self.slots = [i for i, bit in enumerate(eligible) if bit == "1"]
        self.length, self.generator = len(eligible), generator
        k = len(self.slots)
        top = k if max_sites is None else min(max_sites, k)
        self.weights = torch.tensor([float(math.comb(k, c)) for c in range(top + 1)], dtype=torch.float64)

    def __call__(self) -> str:
        count = int(torch.multinomial(self.weights, 1, generator=self.generator))
        on = torch.randperm(len(self.slots), generator=self.generator)[:count].tolist()
        bits = ["0"] * self.length
        for i in on:
            bits[self.slots[i]] = "1"
        return "".join(bits)


class SupernetTraining(Training):
    """``loop.Training`` of the supernet: each training step runs a freshly sampled mask (a forward pre-hook on the
    model, in training mode only); each epoch's evaluation scores ``reference_mask`` (every eligible site on, or the
    first ``max_sites`` of them). The trial's ``mask`` is the eligibility mask (where the supernet has a choice)."""

    run_title = "supernet"  # the MLflow child run's name
    logs_model = False  # the supernet is not a deployable network: no MLflow model, no export

    def __init__(self, cfg: TrialConfig, max_sites: int | None = None):
        self.max_sites = max_sites
        super().__init__(cfg)
        self.sample = MaskSampler(self.mask, max_sites, torch.Generator().manual_seed(cfg.seed + 1))
        on = [i for i, bit in enumerate(self.mask) if bit == "1"][: max_sites or None]
        self.reference_mask = "".join("1" if i in on else "0" for i in range(len(self.mask)))
        self.sampled = 0  # masks drawn for training steps so far
        self.model.register_forward_pre_hook(self._before_forward)
        self._use(self.reference_mask)

    def _network(self, cfg: TrialConfig, num_classes: int, in_chans: int):
        return build_supernet(cfg, num_classes, in_chans)

    @property
    def sites(self) -> list:
        return self.site_trace.sites

    def _before_forward(self, module: nn.Module, args) -> None:
        if module.training:  # a training step (recalibration and evaluation run in eval mode)
            set_mask(module, self.sites, self.sample())
            self.sampled += 1

    def _use(self, mask: str) -> None:
        for model in self._models():
            set_mask(model, self.sites, mask)

    def _evaluate_epoch(self) -> dict[str, float]:
        self._use(self.reference_mask)
        return super()._evaluate_epoch()

    @torch.no_grad()
    def evaluate_mask(self, mask: str) -> tuple[float, float]:
        """Validation loss and top-1 accuracy (%) of ``mask`` with the supernet's weights, its BatchNorm statistics
        recalibrated for that mask on the trial's fixed training batches (``Training.recalibrate_bn``)."""
        self._use(mask)
        self.recalibrate_bn(self.model)
        return self.evaluate(self.model)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask_rng": self.sample.generator.get_state(), "sampled": self.sampled}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.sample.generator.set_state(state["mask_rng"])
        self.sampled = state["sampled"]
