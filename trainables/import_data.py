"""``dataset:`` by import path (DESIGN.md §4): a dataset class, or a user's factory.

- ``package.module:Class`` (e.g. ``torchvision.datasets:FashionMNIST``, ``torchvision.datasets:SVHN``): built as
  ``Class(root=data_dir, download=download, **data_args)`` twice, for the training and the test split, with
  ``train=True/False`` or ``split="train"/"test"``, whichever its signature takes.
- ``package.module:build`` (any other callable): ``build(**data_args)`` returns ``(train_dataset, val_dataset,
  num_classes)``.

Either way the samples are ``(image, label)``, the image a PIL image or a tensor (C×H×W or H×W, uint8 or float in
[0, 1]). Channels, the number of classes and the native size come from the data (the first sample, the dataset's
``classes``), not from a table; a grayscale set stays one channel. Each image becomes a tensor, is resized to the
trial's ``image_size`` and normalized with per-channel statistics of the first training images. No augmentation.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from trainables.data import DataError
from trainables.imports import import_object
from trainables.loader_data import LoaderData

STATS_SAMPLES = 256  # training images the normalization statistics are taken from
SPLITS = {True: "train", False: "test"}


def resolve(path: str):
    """The dataset class or factory ``package.module:attr`` names; a ``DataError`` naming the module or attribute."""
    try:
        obj = import_object(path, "dataset")
    except ValueError as err:
        raise DataError(str(err)) from None
    if not callable(obj):
        raise DataError(f"dataset {path!r}: {path.partition(':')[2]} is not a dataset class or a factory function")
    return obj


def build_split(cls: type, train: bool, data_dir: str, download: bool, data_args: dict):
    """``cls`` constructed for one split: ``train=`` or ``split=`` as its signature takes."""
    params = inspect.signature(cls).parameters
    kwargs = dict(data_args)
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())  # EMNIST(root, split, **kwargs): train= too
    if "train" in params:
        kwargs["train"] = train
    elif "split" in params and "split" not in data_args:
        kwargs["split"] = SPLITS[train]
    elif open_kwargs:
        kwargs["train"] = train
    else:
        raise DataError(
            f"{cls.__module__}:{cls.__name__} takes neither train= nor split=; give a factory "
            "(package.module:build) that returns (train_dataset, val_dataset, num_classes)"
        )
    if "download" in params or open_kwargs:
        kwargs["download"] = download
    try:
        return cls(root=data_dir, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # torchvision raises RuntimeError ("Dataset not found"), others their own
        call = ", ".join(f"{k}={v!r}" for k, v in {"root": data_dir, **kwargs}.items())
        raise DataError(f"data_dir {data_dir}: {cls.__name__}({call}) failed: {type(exc).__name__}: {exc}") from None


def datasets(path: str, data_dir: str, download: bool, data_args: dict) -> tuple:
    """``(train_dataset, val_dataset, num_classes or None)`` from the class or the factory ``path`` names."""
    obj = resolve(path)
    if inspect.isclass(obj):
        if not data_dir:
            raise DataError(f"dataset {path} needs data_dir: the root folder it reads (root=data_dir)")
        return (
            build_split(obj, True, data_dir, download, data_args),
            build_split(obj, False, data_dir, download, data_args),
            None,
        )
    try:
        built = obj(**data_args)
    except TypeError as exc:
        raise DataError(f"dataset {path}: calling it with data_args {data_args}: {exc}") from None
    if not (isinstance(built, tuple) and len(built) == 3):
        raise DataError(
            f"dataset {path}: a factory returns (train_dataset, val_dataset, num_classes), got {type(built).__name__}"
        )
    return built


def check_source(path: str, data_dir: str, download: bool, data_args: dict) -> None:
    """Before Ray: the class or factory imports, and a dataset class finds its files in ``data_dir`` (download off)."""
    obj = resolve(path)
    if inspect.isclass(obj) and not download:
        if not data_dir:
            raise DataError(f"dataset {path} needs data_dir: the root folder it reads (root=data_dir)")
        build_split(obj, True, data_dir, False, data_args)


def to_tensor(image) -> torch.Tensor:
    """A sample's image as a float C×H×W tensor in [0, 1] (a PIL image, or a tensor / array C×H×W or H×W)."""
    if not isinstance(image, torch.Tensor):
        if hasattr(image, "mode"):  # a PIL image: L stays one channel, RGB three
            from torchvision.transforms.functional import pil_to_tensor

            image = pil_to_tensor(image)
        else:
            image = torch.as_tensor(image)
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3:
        raise DataError(f"an image must be C×H×W or H×W, got shape {tuple(image.shape)}")
    return image.float().div_(255) if image.dtype == torch.uint8 else image.float()


class ImportedData(LoaderData):
    """A class's or a factory's two datasets, with channels, classes and native size read from the data."""

    def __init__(self, path: str, data_dir: str, download: bool, data_args: dict, image_size: int, workers: int = 2):
        train_set, val_set, num_classes = datasets(path, data_dir, download, data_args)
        if len(train_set) == 0 or len(val_set) == 0:
            raise DataError(f"dataset {path}: empty split (train {len(train_set)}, val {len(val_set)} samples)")
        first = to_tensor(train_set[0][0])
        num_classes = int(num_classes or _count_classes(train_set, path))
        super().__init__(train_set, val_set, num_classes, first.shape[0], image_size, workers)
        self.native_size = tuple(first.shape[1:])
        sample = torch.stack(
            [_resize(to_tensor(train_set[i][0]), image_size) for i in range(min(STATS_SAMPLES, len(train_set)))]
        )
        self.mean = sample.mean(dim=(0, 2, 3))
        self.std = sample.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def transform(self, train: bool):
        return _Normalized(self.image_size, self.mean, self.std)


class _Normalized:
    """Picklable (DataLoader workers): tensor, resized, normalized."""

    def __init__(self, image_size: int, mean: torch.Tensor, std: torch.Tensor):
        self.image_size, self.mean, self.std = image_size, mean.view(-1, 1, 1), std.view(-1, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        return (_resize(to_tensor(image), self.image_size) - self.mean) / self.std


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(
        x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
    )[0]


def _count_classes(dataset, path: str) -> int:
    """Classes of a dataset class: its ``classes``, else one more than the largest of its ``targets`` / ``labels``."""
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is not None and len(labels):
            return int(torch.as_tensor(labels).max()) + 1
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    if not labels or min(labels) < 0:
        raise DataError(f"dataset {path}: labels must be integers 0..C-1")
    return max(labels) + 1
