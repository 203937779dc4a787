"""The flat, validated configuration of one trial (DESIGN.md §4).

Ray Tune hands a trial a flat dict: the sweep file's fixed ``trial`` values merged with the values the
searcher picked. ``TrialConfig.from_flat`` validates it before any work starts: unknown keys, wrong
types and names outside the registries are ``ConfigError``s that name the key.

A mapping field (``model_args``, ``data_args``) may arrive whole or one entry per key, ``model_args.<key>`` (an
entry searched on its own); ``from_flat`` folds those keys into the mapping, and ``params`` flattens it the same way
(MLflow params, summary columns).

A searched insertion mask arrives as one key per site, ``site_0 … site_{k-1}`` (0/1, DESIGN.md §6);
``from_flat`` folds them into ``policy="mask"`` and ``mask="0101…"``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from trainables.activations import (
    check_config,
    config_fields,
    config_kwargs,
    create_act,
    inserts,
    is_registered_act,
    list_acts,
)
from trainables.data import DATASETS, NEEDS_DIR, DataError
from trainables.errors import ConfigError, did_you_mean
from trainables.models import model_arguments
from trainables.models.checks import check_model
from trainables.policy import KINDS as POLICY_KINDS, Policy

SITE_KEY = re.compile(r"^site_(\d+)$")
UNKNOWN_KEY_ERRORS = ("extra_forbidden", "unexpected_keyword_argument")


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    """pydantic's validator for a config class, built once per process (building it takes longer than validating)."""
    return TypeAdapter(cls)


@dataclass(frozen=True)
class TrialConfig:
    __pydantic_config__ = ConfigDict(extra="forbid")

    # what is trained
    model: str = "digits_cnn"  # a project model (`lslu-sweep models`), a timm name, or package.module:factory
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # the constructor's own keywords
    pretrained: bool = False  # load weights: from pretrained_file, else timm's local cache (never downloaded)
    pretrained_file: str = ""  # a state dict (.pth / .safetensors) to start from
    cifar_stem: bool = False  # 3×3 stride-1 stem without max-pool, for 32×32 inputs
    width: Annotated[float, Field(gt=0.0)] = 1.0  # channel multiplier (VanillaNet's x0_25 = 0.25; digits_cnn)
    # VanillaNet: epochs for λ to rise 0→1 (0 = a third of the epochs)
    deep_train_epochs: Annotated[int, Field(ge=0)] = 0
    dataset: str = "digits"  # a name in trainables/data.py DATASETS, or package.module:Class / package.module:build
    data_dir: str = ""  # cifar10/cifar100: folder with torchvision's pickle batches; imagefolder: train/ and val/ class
    # folders; a dataset class: its root
    download: bool = False  # cifar, a dataset class: fetch into data_dir if it is missing (needs network)
    data_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # a dataset by import path: its keyword args
    image_size: Annotated[int, Field(ge=8, le=1024)] = 16  # side of the (square) input images
    # the data set's standard augmentation (CIFAR: pad-4 crop + flip; ImageFolder: resized crop + flip)
    augment: bool = True
    workers: Annotated[int, Field(ge=0)] = 2  # imagefolder: DataLoader worker processes
    train_samples: Annotated[int, Field(ge=0)] = 0  # use only the first N training images (0 = all): smoke tests
    val_samples: Annotated[int, Field(ge=0)] = 0  # use only the first N validation images (0 = all)
    # activations
    act: str = "relu"  # every site's activation (native: the model's own); the base of LSLU (base_act)
    insert_act: str = "lslu"  # what the insertion policy puts at the selected sites (a name or package.module:Class)
    n: Annotated[int, Field(ge=0, le=16)] = 3  # LSLU series length; 0 = no LSLU, sites keep `act`
    # LSLU θ/ω and PWLU's parameters per layer or per channel
    granularity: Literal["layer", "channel"] = "layer"
    # PWLU: intervals N on [B_L, B_R] (papers/003 recommend 8-16)
    pwlu_intervals: Annotated[int, Field(ge=1, le=256)] = 16
    # PWLU: epochs of phase I (ReLU, collecting input statistics) before realign()
    pwlu_warmup_epochs: Annotated[int, Field(ge=1)] = 5
    # LayerAct: α in sqrt(σ² + α) (papers/004: 1e-5 CIFAR, 0.1 ImageNet)
    la_alpha: Annotated[float, Field(gt=0.0)] = 1e-5
    # where the inserted activation goes (trainables.insertion)
    policy: str = "all"  # one of none, all, downsampling, stages, first_k, last_k, mask, paths
    mask: str = ""  # policy=mask: one 0/1 per site in forward order
    stages: str = ""  # policy=stages: comma-separated stage numbers (0 = stem), e.g. "1,3"
    k: Annotated[int, Field(ge=0)] = 0  # policy=first_k / last_k: how many sites
    paths: str = ""  # policy=paths: comma-separated globs over module paths
    # regularization
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # dropout where the model's head takes it
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # for ce and bce
    mixup: Annotated[float, Field(ge=0.0)] = 0.0  # mixup alpha (0 = off)
    cutmix: Annotated[float, Field(ge=0.0)] = 0.0  # cutmix alpha (0 = off)
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # EMA of the weights, evaluated alongside (0 = off)
    # optimization
    loss: Literal["ce", "bce"] = "ce"  # bce: timm's binary cross-entropy, as the LSLU paper trains
    optimizer: Literal["lamb", "adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0)] = 3e-3  # peak learning rate, reached after warm-up
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only (nesterov)
    epochs: Annotated[int, Field(ge=1)] = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 1  # linear warm-up, then cosine decay to 0
    batch_size: Annotated[int, Field(ge=1)] = 64
    clip_grad: Annotated[float, Field(ge=0.0)] = 0.0  # clip the global gradient norm to this (0 = off)
    # stop after this many epochs without a better val_acc (0 = off)
    early_stop_patience: Annotated[int, Field(ge=0)] = 0
    # before each evaluation, BatchNorm statistics recomputed on this many training batches with the current weights
    # (0 = off: evaluate with the running statistics, which lag behind the weights early in training)
    bn_recalibrate_batches: Annotated[int, Field(ge=0)] = 8
    # execution
    seed: int = 0  # model init, batch order, augmentation
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the trial was given a GPU
    # mixed precision on CUDA: bf16 autocast (true, bf16, and auto: on CUDA only), fp16 autocast with a gradient scaler
    # (GPUs without bf16: V100, T4), false. A CPU trial trains in float32 whatever this says (the device is known only
    # in the trial: a sweep for GPUs still smoke-tests on CPU); the run's amp_dtype tag says what it trained with.
    amp: Union[bool, Literal["auto", "bf16", "fp16"]] = "auto"
    channels_last: Union[bool, Literal["auto"]] = "auto"  # NHWC memory format; auto: on CUDA only

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> "TrialConfig":
        values = _fold_site_keys(_fold_mapping_keys(dict(flat)))
        try:
            cfg = _adapter(cls).validate_python(values)
        except ValidationError as exc:
            err = first_error(exc)
            key = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(key, _pydantic_message(err)) from None
        cfg.check()
        return cfg

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def mapping_fields(cls) -> list[str]:
        """The fields that hold a mapping (``data_args``): their entries are keys of their own, ``<field>.<key>``."""
        return [f.name for f in dataclasses.fields(cls) if f.default_factory is dict]

    @classmethod
    def is_key(cls, key: str) -> bool:
        """Whether ``key`` names a field or one entry of a mapping field (``data_args.root_subset``)."""
        field, dot, entry = key.partition(".")
        return key in cls.field_names() or bool(dot and entry and field in cls.mapping_fields())

    def params(self) -> dict[str, Any]:
        """The config as MLflow params: one per field, a mapping field one per entry (``data_args.<key>``)."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if key in self.mapping_fields():
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def check(self) -> None:
        """Checks that span fields or registries (types and ranges are checked by pydantic)."""
        check_model(self)
        if self.act != "native" and not is_registered_act(self.act):
            raise ConfigError("act", _unknown_act(self.act, "native, "))
        if not is_registered_act(self.insert_act):
            raise ConfigError("insert_act", _unknown_act(self.insert_act))
        for name in [self.act] * (self.act != "native") + [self.insert_act] * self.inserts:
            _check_act_arguments(name, self)
        if self.width != 1.0 and "width" not in model_arguments(self.model):
            raise ConfigError("width", f"model {self.model!r} has no width multiplier; leave width at 1.0")
        Policy.from_config(self)  # policy and its argument (mask / stages / k / paths)
        _check_dataset(self)
        if self.dataset in NEEDS_DIR and not self.data_dir:
            raise ConfigError(
                "data_dir",
                f"dataset {self.dataset} reads its files from data_dir; set it to the folder that holds them",
            )
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(
                "batch_size", f"mixup/cutmix pair images within a batch: use an even batch size, got {self.batch_size}"
            )
        if self.warmup_epochs > self.epochs:
            raise ConfigError("warmup_epochs", f"must not exceed epochs ({self.epochs}), got {self.warmup_epochs}")

    @property
    def insertion_policy(self) -> Policy:
        """Where the inserted activation goes. A config built directly (unchecked, not by ``from_flat``) may give
        the policy's ``kind:arg`` form in ``policy`` (``policy="stages:1"``), as ever; ``check`` refuses that."""
        return Policy.from_config(self) if self.policy in POLICY_KINDS else Policy.parse(self.policy)

    @property
    def policy_spec(self) -> str:
        """The policy in ``kind:arg`` form, e.g. ``mask:0101``."""
        return str(self.insertion_policy)

    @property
    def base_act(self) -> str:
        """The activation a learnable one builds on (LSLU's f): ``act``, or relu where the model keeps its own."""
        return "relu" if self.act == "native" else self.act

    @property
    def inserts(self) -> bool:
        """Whether any site gets the inserted activation (LSLU with n = 0 is the LSLU-free baseline)."""
        return self.policy != "none" and inserts(self.insert_act, config_kwargs(self.insert_act, self))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _unknown_act(name: str, also: str = "") -> str:
    """Why ``name`` names no activation: the valid names, or what went wrong importing ``package.module:Class``."""
    if ":" in name:
        try:
            create_act(name)
        except ValueError as err:
            return str(err)
    names = list_acts()
    return f"unknown activation {name!r}; valid choices: {also}{', '.join(names)}{did_you_mean(name, names)}"


_FIELD_OF = {"base_act": "act"}  # a property an activation reads → the field a user sets


def _check_act_arguments(name: str, cfg: TrialConfig) -> None:
    """Activation ``name`` accepts the values it takes from this config (built once on the meta device: no memory, no
    random numbers drawn; its ``ValueError`` names the key of the argument it mentions) and its own rule holds."""
    kwargs = config_kwargs(name, cfg)
    try:
        with torch.device("meta"):
            create_act(name, channels=8, **kwargs)
    except ValueError as err:
        mentioned = [k for k in sorted(kwargs, key=len, reverse=True) if re.search(rf"\b{k}\b", str(err))]
        field = config_fields(name)[mentioned[0]] if mentioned else ("act" if name == cfg.act else "insert_act")
        raise ConfigError(_FIELD_OF.get(field, field), str(err)) from None
    broken = check_config(name, cfg)
    if broken:
        raise ConfigError(*broken)


def _check_dataset(cfg: TrialConfig) -> None:
    """A dataset name the project has, or an import path that imports (a typo fails here, in the driver, before Ray)."""
    if ":" not in cfg.dataset:
        if cfg.dataset not in DATASETS:
            raise ConfigError(
                "dataset",
                f"unknown dataset {cfg.dataset!r}; valid choices: {', '.join(DATASETS)}, or a "
                f"dataset class / factory by import path (package.module:Name){did_you_mean(cfg.dataset, DATASETS)}",
            )
        if cfg.data_args:
            raise ConfigError(
                "data_args",
                f"only a dataset given by import path takes arguments; {cfg.dataset} takes "
                f"none, got {sorted(cfg.data_args)}",
            )
        return
    from trainables.import_data import resolve

    try:
        resolve(cfg.dataset)
    except DataError as err:
        raise ConfigError("dataset", str(err)) from None


def _fold_mapping_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``data_args.x: 1`` → ``data_args: {x: 1}``, merged over a ``data_args`` given whole."""
    for key in [k for k in values if "." in k]:
        field, _, entry = key.partition(".")
        if field in TrialConfig.mapping_fields() and entry:
            whole = values.get(field) or {}
            if not isinstance(whole, dict):
                raise ConfigError(field, f"expected a mapping, got {whole!r}")
            values[field] = {**whole, entry: values.pop(key)}
    return values


def _fold_site_keys(values: dict[str, Any]) -> dict[str, Any]:
    bits = {int(m.group(1)): values.pop(key) for key in list(values) if (m := SITE_KEY.match(key))}
    if not bits:
        return values
    if sorted(bits) != list(range(len(bits))):
        raise ConfigError(
            "site_*", f"site keys must be site_0 … site_{len(bits) - 1} without gaps, got indices {sorted(bits)}"
        )
    for i, bit in bits.items():
        if bit not in (0, 1, True, False, "0", "1"):
            raise ConfigError(f"site_{i}", f"expected 0 or 1, got {bit!r}")
    if values.get("policy", "mask") != "mask":
        raise ConfigError("policy", f"site_* keys define a mask, but policy is {values['policy']!r}")
    values["policy"] = "mask"
    values["mask"] = "".join(str(int(bits[i])) for i in range(len(bits)))
    return values


def first_error(exc: ValidationError) -> dict:
    """The error to report: an unknown key first, since a typo there usually explains the rest."""
    errors = exc.errors()
    return next((e for e in errors if e["type"] in UNKNOWN_KEY_ERRORS), errors[0])


def _pydantic_message(err: dict) -> str:
    if err["type"] in UNKNOWN_KEY_ERRORS:
        names = TrialConfig.field_names()
        return f"unknown key; valid keys: {', '.join(names)}{did_you_mean(err['loc'][-1], names)}"
    got = err.get("input")
    return f"{err['msg']} (got {got!r})"
