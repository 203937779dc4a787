"""Data sets read by a DataLoader with workers (pinned memory, persistent workers), behind the interface the loop
uses (``train_batches`` / ``val_batches``, ``head``, ``to``): a pair of map-style datasets giving ``(image, label)``
and one transform per split. ``imagefolder`` and the import-path forms of ``dataset:`` (``trainables/import_data.py``)
are built on it.
"""

from __future__ import annotations

import torch


class LoaderData:
    """``train_set`` / ``val_set`` of ``(image, label)`` samples; subclasses give ``transform(train, augment)``."""

    def __init__(self, train_set, val_set, num_classes: int, in_chans: int, image_size: int, workers: int = 2):
        self.train_set, self.val_set = train_set, val_set
        self.num_classes, self.in_chans = num_classes, in_chans
        self.image_size, self.workers = image_size, workers
        self.device = torch.device("cpu")
        self._train_subset, self._val_subset = 0, 0
        self._loaders: dict = {}

    def transform(self, train: bool):
        raise NotImplementedError

    @property
    def n_train(self) -> int:
        return self._train_subset or len(self.train_set)

    @property
    def n_val(self) -> int:
        return self._val_subset or len(self.val_set)

    def head(self, train: int = 0, val: int = 0) -> "LoaderData":
        self._train_subset, self._val_subset = min(train, len(self.train_set)), min(val, len(self.val_set))
        return self

    def to(self, device) -> "LoaderData":
        self.device = torch.device(device)
        return self

    def _loader(self, train: bool, batch_size: int, generator: torch.Generator | None, augment: bool):
        """One DataLoader per split, built once, so its workers persist across epochs."""
        key = (train, batch_size, augment)
        if key not in self._loaders:
            from torch.utils.data import DataLoader, Subset

            dataset = self.train_set if train else self.val_set
            size = self.n_train if train else self.n_val
            view = Transformed(Subset(dataset, range(size)), self.transform(train and augment))
            self._loaders[key] = DataLoader(
                view,
                batch_size=batch_size,
                shuffle=train,
                generator=generator if train else None,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                drop_last=False,
            )
        return self._loaders[key]

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        image_size: int,
        augment: bool = True,
        channels_last: bool = False,
    ):
        loader = self._loader(True, batch_size, generator, augment)
        # the order comes from the generator of this call, as for in-memory data: the loader is built once and shared
        # by every caller with the same batch size and augmentation (the training, and the BatchNorm recalibration's
        # fixed draw), so the one it was built with must not decide for the others
        loader.generator = loader.sampler.generator = generator
        yield from self._batches(loader, channels_last)

    def val_batches(self, batch_size: int, image_size: int, channels_last: bool = False):
        yield from self._batches(self._loader(False, batch_size, None, False), channels_last)

    def _batches(self, loader, channels_last: bool):
        non_blocking = self.device.type == "cuda"
        for x, y in loader:
            x = x.to(self.device, non_blocking=non_blocking)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            yield x, y.to(self.device, non_blocking=non_blocking)


class Transformed(torch.utils.data.Dataset):
    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), int(label)
