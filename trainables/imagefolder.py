"""A user's own classes: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (e.g. the Silkworm set).

Read from disk by a DataLoader with workers (pinned memory, persistent workers), with timm's usual
transforms: random resized crop + flip for training, resize + center crop for validation, ImageNet statistics.
"""
from __future__ import annotations

from pathlib import Path

import torch

from trainables.data import IMAGENET_STATS, DataError


class ImageFolderData:
    def __init__(self, data_dir: str, image_size: int, workers: int = 2):
        import torchvision

        if not data_dir:
            raise DataError("dataset imagefolder needs data_dir: "
                            "a folder with train/<class>/ and val/<class>/ image folders")
        root = Path(data_dir).expanduser()
        for split in ("train", "val"):
            folder = root / split
            if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
                raise DataError(f"data_dir {root}: expected {split}/ with one folder of images per class "
                                "(train/<class>/*.jpg, val/<class>/*.jpg)")
        try:
            self.train_set = torchvision.datasets.ImageFolder(str(root / "train"))
            self.val_set = torchvision.datasets.ImageFolder(str(root / "val"))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"data_dir {root}: {exc}") from None
        if self.train_set.classes != self.val_set.classes:
            raise DataError(f"data_dir {root}: train/ and val/ must hold the same class folders; "
                            f"train has {self.train_set.classes}, val has {self.val_set.classes}")
        self.root, self.image_size, self.workers = root, image_size, workers
        self.num_classes, self.in_chans = len(self.train_set.classes), 3
        self.device = torch.device("cpu")
        self._train_subset, self._val_subset = 0, 0
        self._loaders: dict = {}

    @property
    def n_train(self) -> int:
        return self._train_subset or len(self.train_set)

    @property
    def n_val(self) -> int:
        return self._val_subset or len(self.val_set)

    def head(self, train: int = 0, val: int = 0) -> "ImageFolderData":
        self._train_subset, self._val_subset = min(train, len(self.train_set)), min(val, len(self.val_set))
        return self

    def to(self, device) -> "ImageFolderData":
        self.device = torch.device(device)
        return self

    def _loader(self, train: bool, batch_size: int, generator: torch.Generator | None, augment: bool):
        """One DataLoader per split, built once, so its workers persist across epochs."""
        key = (train, batch_size, augment)
        if key not in self._loaders:
            from torch.utils.data import DataLoader, Subset

            dataset = self.train_set if train else self.val_set
            size = self.n_train if train else self.n_val
            view = _Transformed(Subset(dataset, range(size)), _transform(self.image_size, train and augment))
            self._loaders[key] = DataLoader(view, batch_size=batch_size, shuffle=train,
                                            generator=generator if train else None, num_workers=self.workers,
                                            pin_memory=self.device.type == "cuda",
                                            persistent_workers=self.workers > 0, drop_last=False)
        return self._loaders[key]

    def train_batches(self, batch_size: int, generator: torch.Generator, image_size: int, augment: bool = True,
                      channels_last: bool = False):
        yield from self._batches(self._loader(True, batch_size, generator, augment), channels_last)

    def val_batches(self, batch_size: int, image_size: int, channels_last: bool = False):
        yield from self._batches(self._loader(False, batch_size, None, False), channels_last)

    def _batches(self, loader, channels_last: bool):
        non_blocking = self.device.type == "cuda"
        for x, y in loader:
            x = x.to(self.device, non_blocking=non_blocking)
            yield ((x.contiguous(memory_format=torch.channels_last) if channels_last else x),
                   y.to(self.device, non_blocking=non_blocking))


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), label


def _transform(image_size: int, train: bool):
    from torchvision import transforms as T

    mean, std = IMAGENET_STATS
    if train:
        steps = [T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(image_size / 0.875)), antialias=True), T.CenterCrop(image_size)]
    return T.Compose([T.Lambda(_rgb), *steps, T.ToTensor(), T.Normalize(mean, std)])


def _rgb(image):
    return image.convert("RGB")
