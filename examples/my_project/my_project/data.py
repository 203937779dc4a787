"""A user's own data set factory: ``dataset: my_project.data:build`` returns ``(train, val, num_classes)``.

Here: scikit-learn's bundled 8×8 digits (no download), split by ``val_fraction``; any ``torch.utils.data.Dataset``
of ``(image, label)`` pairs works the same (images as tensors C×H×W or H×W, or PIL images). lslu-sweep takes the
channels (1 here), the classes and the native size from the data and resizes the images to the trial's image_size.
"""

import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def build(val_fraction: float = 0.2, seed: int = 0, limit: int = 0):
    """``val_fraction``, ``seed`` and ``limit`` (use only the first N images, 0 = all) come from ``data_args``."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if limit:
        order = order[:limit]
    n_val = max(1, int(len(order) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val]), 10
