"""A user's own classes: ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*`` (e.g. the Silkworm set).

Read from disk by a DataLoader with workers (``trainables/loader_data.py``), with timm's usual
transforms: random resized crop + flip for training, resize + center crop for validation, ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path

from trainables.data import IMAGENET_STATS, DataError
from trainables.loader_data import LoaderData


class ImageFolderData(LoaderData):
    def __init__(self, data_dir: str, image_size: int, workers: int = 2):
        import torchvision

        root = check_folders(data_dir)
        try:
            train_set = torchvision.datasets.ImageFolder(str(root / "train"))
            val_set = torchvision.datasets.ImageFolder(str(root / "val"))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"data_dir {root}: {exc}") from None
        if train_set.classes != val_set.classes:
            raise DataError(
                f"data_dir {root}: train/ and val/ must hold the same class folders; "
                f"train has {train_set.classes}, val has {val_set.classes}"
            )
        super().__init__(train_set, val_set, len(train_set.classes), 3, image_size, workers)
        self.root = root

    def transform(self, train: bool):
        return _transform(self.image_size, train)


def check_folders(data_dir: str) -> Path:
    """``data_dir`` as a path, once it holds ``train/`` and ``val/`` with a folder per class; else a ``DataError``."""
    if not data_dir:
        raise DataError(
            "dataset imagefolder needs data_dir: a folder with train/<class>/ and val/<class>/ image folders"
        )
    root = Path(data_dir).expanduser()
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise DataError(
                f"data_dir {root}: expected {split}/ with one folder of images per class "
                "(train/<class>/*.jpg, val/<class>/*.jpg)"
            )
    return root


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
