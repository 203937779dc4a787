"""The ``--smoke-test`` form of a sweep: same searcher and space, shrunk to run in minutes on a laptop.

Digits (the file's own data where the space searches its dataset or data_args), ≤ 4 trials, ≤ 2 epochs (PWLU
realigns after 1), small images (the smallest every searched model takes) and fewer of them the deeper the network;
a wide network with a width multiplier at width 0.25 (VanillaNet at full width means gigabyte checkpoints and
seconds of fusing per trial: the same sites and stages, narrower). Sized by forward multiply–accumulates counted on
the meta device (``model_checks.forward_macs``).
"""

from __future__ import annotations

import itertools

from search_spaces.model_checks import forward_macs
from search_spaces.schema import Sweep, SweepSpec
from trainables.config import TrialConfig

SMOKE_TRAIN, SMOKE_VAL = 512, 256  # images a smoke test trains and validates on at most: enough to see learning
SMOKE_MIN_TRAIN = 16  # ... and at least, however deep the network
SMOKE_GMACS = 2.0  # forward multiply–accumulates (G) of one smoke epoch's training images: deep nets get fewer images
SMOKE_WIDTH = 0.25  # a wide network with a width multiplier trains this wide in a smoke test (VanillaNet's x0_25) ...
SMOKE_WIDE_GMACS = 0.02  # ... when one smoke image costs it more than this (G multiply–accumulates)
SMOKE_SIZES = (16, 32, 64)  # smoke image sides, smallest first: the first every searched model can take
SMOKE_TRIALS = 4  # trials a smoke test runs at most
SMOKE_CPU = 1.0  # CPUs a smoke-test trial takes at most (the driver fits it to the machine: a GPU only where one is)
SMOKE_CANDIDATES, SMOKE_EVAL_MASKS = 2, 16  # a one-shot smoke test: masks retrained, masks scored on the supernet
ARCHITECTURE_KEYS = ("model", "cifar_stem", "width")  # searched keys that change what a smoke test must afford


def shrink(sweep: Sweep) -> Sweep:
    """The smoke-test form of ``sweep`` (``Sweep.shrunk``), a new sweep validated as such."""
    data = sweep.spec.model_dump()
    size = _smoke_image_size(sweep)
    width = _smoke_width(sweep, size)
    train = _smoke_samples(sweep, size, width)
    base = sweep.base
    shrunk = {
        **({"width": width} if width else {}),
        "dataset": "digits",
        "data_args": {},
        "image_size": size,
        "epochs": min(base.epochs, 2),
        "warmup_epochs": min(base.warmup_epochs, 1),
        "pwlu_warmup_epochs": min(base.pwlu_warmup_epochs, 1),
        "train_samples": train,
        "val_samples": min(SMOKE_VAL, train // 2),
    }
    if any(k == "dataset" or k.startswith("data_args.") for k in sweep.spec.space):  # searched keys of the file's
        del shrunk["dataset"], shrunk["data_args"]  # data, which digits cannot take: the smoke test keeps that data
    data["trial"] = {**data["trial"], **{k: v for k, v in shrunk.items() if k not in sweep.spec.space}}
    data["search"]["num_samples"] = min(sweep.spec.search.num_samples, SMOKE_TRIALS)
    data["search"]["grace_period"] = 1
    if sweep.spec.search.strategy == "oneshot":  # a short supernet, a few masks scored, two retrained
        s = sweep.spec.search
        data["search"].update(
            supernet_epochs=min(s.supernet_epochs or base.epochs, 2),
            candidates=min(s.candidates, SMOKE_CANDIDATES),
            eval_masks=min(s.eval_masks, SMOKE_EVAL_MASKS),
        )
    return Sweep(SweepSpec.model_validate(data), sweep.source, sweep.file, smoke=True, overrides=sweep.overrides)


def _smoke_models(sweep: Sweep, width: float | None = None) -> list[TrialConfig]:
    """The fixed config with every searched architecture (model, stem, width): the smoke image size and image count
    must suit all of them. A conditional key adds its fixed value too (what the trials that do not sample it keep)."""
    base, options = {**sweep.base.to_dict(), **({"width": width} if width else {})}, []
    for key in ARCHITECTURE_KEYS:
        dist = sweep.spec.space.get(key)
        if dist is None or dist.type != "categorical":
            options.append([base[key]])
        else:
            options.append(list(dict.fromkeys([*dist.choices, *([base[key]] if dist.when else [])])))
    return [
        TrialConfig(**{**base, **dict(zip(ARCHITECTURE_KEYS, combo)), "policy": "none"})
        for combo in itertools.product(*options)
    ]


def _smoke_image_size(sweep: Sweep) -> int:
    """The smallest smoke size (≤ the file's own) every searched model can take (VanillaNet downsamples by 32)."""
    for size in SMOKE_SIZES:
        if size >= sweep.base.image_size or all(forward_macs(cfg, size) is not None for cfg in _smoke_models(sweep)):
            return min(size, sweep.base.image_size)
    return sweep.base.image_size


def _smoke_width(sweep: Sweep, size: int) -> float | None:
    """SMOKE_WIDTH where every searched architecture has a width multiplier (not searched) and the costliest takes
    more than SMOKE_WIDE_GMACS per image at the smoke size; else None (the file's width)."""
    from trainables.models import model_arguments

    models = _smoke_models(sweep)
    if (
        "width" in sweep.spec.space
        or sweep.base.width <= SMOKE_WIDTH
        or not all("width" in model_arguments(cfg.model) for cfg in models)
    ):
        return None
    return SMOKE_WIDTH if max((forward_macs(cfg, size) or 0.0) for cfg in models) > SMOKE_WIDE_GMACS else None


def _smoke_samples(sweep: Sweep, size: int, width: float | None = None) -> int:
    """Training images per smoke epoch: SMOKE_GMACS worth of forward passes of the costliest searched model,
    16…512."""
    macs = max((forward_macs(cfg, size) or 0.0) for cfg in _smoke_models(sweep, width))
    return int(min(SMOKE_TRAIN, max(SMOKE_MIN_TRAIN, SMOKE_GMACS / macs if macs else SMOKE_TRAIN)))
