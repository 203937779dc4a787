"""Tiny data sets written in their own on-disk formats, for tests (nothing downloaded)."""

from __future__ import annotations

import struct
import textwrap
from pathlib import Path

import numpy as np


def write_fashion_mnist(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """``root/FashionMNIST/raw/``: the four idx-ubyte files (uncompressed, as torchvision 0.29 reads them after its
    download step unpacks the .gz), 28×28 uint8 images and labels 0…9; returns ``root``."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x0801, n) + labels.tobytes())
    return root


FACTORY = '''
"""A user's own data set factory: ``{package}.data:build`` returns (train, val, num_classes)."""
import torch
from torch.utils.data import TensorDataset


def build(n=24, classes=3, size=12):
    g = torch.Generator().manual_seed(0)
    def split(count):
        labels = torch.arange(count) % classes
        images = torch.rand(count, 3, size, size, generator=g) * 0.2 + labels.view(-1, 1, 1, 1) / classes
        return TensorDataset(images, labels)
    return split(n), split(n // 2), classes
'''


def write_factory_package(folder: Path, package: str) -> Path:
    """``folder/<package>/data.py`` with a ``build`` factory (a package outside the project); returns ``folder``."""
    pkg = folder / package
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(textwrap.dedent(FACTORY.format(package=package)))
    return folder
