"""Data sets a trial trains on. Small sets live in memory as tensors (no DataLoader worker overhead).

``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes), split 80/20 with
a fixed seed (stratified), upsampled bilinearly to ``image_size``, repeated to 3 channels and
normalized with the training split's mean and std. It works offline, so tests and the quickstart use it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DATASETS = ("digits",)
SPLIT_SEED = 0  # the train/val split never depends on the trial's seed


@dataclass(frozen=True)
class TensorData:
    train_x: torch.Tensor  # (N, C, H, W) float32, normalized
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    def head(self, train: int = 0, val: int = 0) -> "TensorData":
        """The first ``train`` / ``val`` images of each split (0 = all); the splits are already shuffled."""
        t, v = train or len(self.train_y), val or len(self.val_y)
        return TensorData(self.train_x[:t], self.train_y[:t], self.val_x[:v], self.val_y[:v], self.num_classes)

    def to(self, device) -> "TensorData":
        return TensorData(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y)), self.num_classes)


@functools.lru_cache(maxsize=4)  # once per worker process: reused actors skip the reload
def load_dataset(name: str, image_size: int) -> TensorData:
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    return _digits(image_size)


def _digits(image_size: int) -> TensorData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    idx_train, idx_val = train_test_split(range(len(y)), test_size=0.2, random_state=SPLIT_SEED, stratify=bunch.target)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    train_x, val_x = x[idx_train], x[idx_val]
    mean, std = train_x.mean(), train_x.std()
    return TensorData((train_x - mean) / std, y[idx_train], (val_x - mean) / std, y[idx_val], num_classes=10)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator | None = None):
    """Mini-batches in a random order drawn from ``generator`` (or in order when it is None)."""
    order = torch.randperm(len(y), generator=generator).to(x.device) if generator is not None else torch.arange(len(y), device=x.device)
    for start in range(0, len(y), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
