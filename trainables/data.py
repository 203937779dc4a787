"""Data sets a trial trains on (DESIGN.md §4), behind one interface: ``train_batches`` / ``val_batches``.

- ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), split 80/20 with a fixed seed
  (stratified), repeated to 3 channels; works offline, so tests and the quickstart use it. No augmentation.
- ``cifar10`` / ``cifar100``: from ``data_dir`` in the python-pickle batch layout torchvision uses
  (``cifar-10-batches-py/data_batch_1…5, test_batch``; ``cifar-100-python/train, test``); downloaded there
  only when ``download`` is asked for. Augmentation: pad 4, random crop, horizontal flip.
- ``imagefolder``: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (e.g. the Silkworm set), read by a
  DataLoader with workers; augmentation: random resized crop and flip.
- ``synthetic``: random images and labels of a given size, for benchmarks (nothing to learn).
- ``package.module:Class`` (``torchvision.datasets:FashionMNIST``) or a user's factory ``package.module:build``
  (``trainables/import_data.py``), read by a DataLoader; channels, classes and size come from the data.

Small sets (digits, CIFAR, synthetic) live on the trial's device as tensors at their native resolution; each
batch is augmented, resized to ``image_size`` and normalized there, with no DataLoader worker overhead.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
NEEDS_DIR = ("cifar10", "cifar100", "imagefolder")
SPLIT_SEED = 0  # the digits train/val split never depends on the trial's seed
CIFAR_STATS = {  # per-channel mean and std of the training images
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class DataError(ValueError):
    """A missing or malformed data set: the message names the path and what was expected there."""


@dataclass(frozen=True)
class TensorData:
    """An in-memory data set: images at native resolution in [0, 1] (or already normalized, ``mean=None``)."""

    train_x: torch.Tensor  # (N, C, h, w) float32
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None  # per-channel normalization, applied per batch
    std: tuple[float, ...] | None = None
    crop_pad: int = 0  # random-crop padding (0: no crop)
    flip: bool = False  # random horizontal flips

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def n_val(self) -> int:
        return len(self.val_y)

    def head(self, train: int = 0, val: int = 0) -> "TensorData":
        """The first ``train`` / ``val`` images of each split (0 = all); the splits are already shuffled."""
        t, v = train or self.n_train, val or self.n_val
        return _replace(
            self, train_x=self.train_x[:t], train_y=self.train_y[:t], val_x=self.val_x[:v], val_y=self.val_y[:v]
        )

    def to(self, device) -> "TensorData":
        return _replace(self, **{k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y")})

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        image_size: int,
        augment: bool = True,
        channels_last: bool = False,
    ):
        """Shuffled, augmented, resized, normalized training batches on the data's device."""
        order = torch.randperm(self.n_train, generator=generator).to(self.train_x.device)
        for start in range(0, self.n_train, batch_size):
            idx = order[start : start + batch_size]
            x = self.train_x[idx]
            if augment:
                x = self._augment(x, generator)
            yield self._finish(x, image_size, channels_last), self.train_y[idx]

    def val_batches(self, batch_size: int, image_size: int, channels_last: bool = False):
        for start in range(0, self.n_val, batch_size):
            yield (
                self._finish(self.val_x[start : start + batch_size], image_size, channels_last),
                self.val_y[start : start + batch_size],
            )

    def _augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_pad:
            p = self.crop_pad
            padded = F.pad(x, (p, p, p, p))  # zeros, as torchvision's RandomCrop(padding=4)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            x = padded[
                torch.arange(n, device=x.device)[:, None, None, None],
                torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                rows,
                cols,
            ]
        if self.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def _finish(self, x: torch.Tensor, image_size: int, channels_last: bool) -> torch.Tensor:
        if x.shape[-1] != image_size or x.shape[-2] != image_size:
            x = F.interpolate(
                x,
                size=(image_size, image_size),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > image_size,
            )
        if self.mean is not None:
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _replace(data: TensorData, **changes) -> TensorData:
    from dataclasses import replace

    return replace(data, **changes)


def load_dataset(
    name: str,
    image_size: int,
    data_dir: str = "",
    download: bool = False,
    train_samples: int = 0,
    val_samples: int = 0,
    data_args: dict | None = None,
):
    """The data set ``name``: a ``TensorData`` (digits, CIFAR, synthetic), an ``ImageFolderData`` or, for an import
    path, an ``ImportedData``."""
    if ":" in name:
        from trainables.import_data import ImportedData

        return ImportedData(name, data_dir, download, dict(data_args or {}), image_size)
    if name == "digits":
        return _digits()
    if name in CIFAR_LAYOUT:
        return _cifar(name, data_dir, download)
    if name == "imagefolder":
        from trainables.imagefolder import ImageFolderData

        return ImageFolderData(data_dir, image_size)
    if name == "synthetic":
        return _synthetic(image_size, train_samples or 1024, val_samples or 256)
    raise DataError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")


def check_data_source(name: str, data_dir: str = "", download: bool = False, data_args: dict | None = None) -> None:
    """Before Ray starts: ``data_dir`` holds what ``name`` reads (unless it may be downloaded), and an import path
    imports. A ``DataError`` names the path and what was expected there."""
    if ":" in name:
        from trainables.import_data import check_source

        check_source(name, data_dir, download, dict(data_args or {}))
    elif name in CIFAR_LAYOUT and not download:
        _cifar_folder(name, data_dir, download)
    elif name == "imagefolder":
        from trainables.imagefolder import check_folders

        check_folders(data_dir)


@functools.lru_cache(maxsize=2)  # once per worker process: reused actors skip the reload
def _digits() -> TensorData:
    images, labels = bundled_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1).repeat(1, 3, 1, 1) / 16.0  # (1797, 3, 8, 8) in [0, 1]
    y = torch.tensor(labels, dtype=torch.int64)
    idx_train, idx_val = stratified_split(labels, val_fraction=0.2, seed=SPLIT_SEED)
    train_x = x[idx_train]
    mean, std = (train_x.mean().item(),) * 3, (train_x.std().item(),) * 3
    return TensorData(train_x, y[idx_train], x[idx_val], y[idx_val], num_classes=10, mean=mean, std=std)


def bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``load_digits`` gives them: images (1797, 8, 8) in 0…16 and labels, read
    from the package's own ``digits.csv.gz`` without importing scikit-learn (that import costs a worker ~1.5 s)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.origin:
        raise DataError("dataset digits needs scikit-learn installed (it ships the digits file)")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, each class split ``1 − val_fraction : val_fraction`` (rounded), both shuffled."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = round(val_fraction * len(members))
        val.append(members[:cut])
        train.append(members[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


@functools.lru_cache(maxsize=2)
def _cifar(name: str, data_dir: str, download: bool) -> TensorData:
    folder_name, train_files, test_files, label_key = CIFAR_LAYOUT[name]
    folder = _cifar_folder(name, data_dir, download)
    root = Path(data_dir).expanduser()
    train = [_cifar_batch(folder / f, label_key) for f in train_files]
    test = [_cifar_batch(folder / f, label_key) for f in test_files]
    num_classes = 10 if name == "cifar10" else 100
    to_x = lambda parts: torch.from_numpy(np.concatenate([p[0] for p in parts])).float().div_(255)  # noqa: E731
    to_y = lambda parts: torch.from_numpy(np.concatenate([p[1] for p in parts])).long()  # noqa: E731
    train_y, val_y = to_y(train), to_y(test)
    if int(max(train_y.max(), val_y.max())) >= num_classes or int(min(train_y.min(), val_y.min())) < 0:
        raise DataError(f"data_dir {root}: {name} labels must lie in 0..{num_classes - 1}")
    mean, std = CIFAR_STATS[name]
    return TensorData(to_x(train), train_y, to_x(test), val_y, num_classes, mean, std, crop_pad=4, flip=True)


def _cifar_folder(name: str, data_dir: str, download: bool) -> Path:
    """The folder that holds the CIFAR batches (downloaded there first where asked); a ``DataError`` if it does not."""
    folder_name, train_files, test_files, _ = CIFAR_LAYOUT[name]
    if not data_dir:
        raise DataError(
            f"dataset {name} needs data_dir: a folder holding {folder_name}/ (torchvision's python-pickle layout)"
        )
    root = Path(data_dir).expanduser()
    folder = root if root.name == folder_name else root / folder_name
    if download and not folder.exists():
        _download_cifar(name, root)
    expected = train_files + test_files
    missing = [f for f in expected if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"data_dir {root}: expected {folder_name}/ with {', '.join(expected)} "
            f"(torchvision's python-pickle layout); missing: {', '.join(missing)}"
            + ("" if download else ". Set download: true to fetch it")
        )
    return folder


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as exc:  # a truncated file, a different pickle, a missing key
        raise DataError(
            f"{path}: not a CIFAR batch (a pickled dict with b'data' (N×3072 uint8) and {label_key!r}): {exc}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected b'data' of shape (N, 3072) and N labels, got {data.shape} and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), labels


def _download_cifar(name: str, root: Path) -> None:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(f"could not download {name} into {root}: {exc}") from None


def _synthetic(image_size: int, n_train: int, n_val: int) -> TensorData:
    g = torch.Generator().manual_seed(SPLIT_SEED)
    make = lambda n: torch.randn(n, 3, image_size, image_size, generator=g)  # noqa: E731
    return TensorData(
        make(n_train),
        torch.randint(0, 10, (n_train,), generator=g),
        make(n_val),
        torch.randint(0, 10, (n_val,), generator=g),
        num_classes=10,
    )
