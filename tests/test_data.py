"""Data sets, loaded by the real code from files the tests write (no data set can be downloaded here)."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import DataError, TensorData, bundled_digits, load_dataset, stratified_split


def test_digits_are_scikit_learns_and_split_stratified():
    from sklearn.datasets import load_digits

    images, labels = bundled_digits()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert len(set(train) | set(val)) == len(labels) == len(train) + len(val)  # disjoint, and every image used
    for c in range(10):  # each class split 80/20, rounded
        assert (labels[val] == c).sum() == round(0.2 * (labels == c).sum())
    assert np.array_equal(stratified_split(labels, 0.2, seed=0)[1], val)  # the same split every time
    assert len(set(labels[val[:20]])) > 3  # shuffled: a prefix (val_samples) holds several classes


def test_digits_split_and_batches():
    data = load_dataset("digits", 16)
    assert data.n_train == 1438 and data.n_val == 359 and data.num_classes == 10 and data.in_chans == 3
    assert set(data.val_y.tolist()) == set(range(10))
    x, y = next(data.val_batches(512, 16))
    assert x.shape == (359, 3, 16, 16) and y.shape == (359,)
    xs = torch.cat([b for b, _ in data.train_batches(500, torch.Generator().manual_seed(0), 16)])
    assert xs.shape == (1438, 3, 16, 16)
    # each batch: bilinear resize of the 8×8 images, then (x - mean) / std with the train split's statistics
    raw = data.train_x
    assert abs(raw.mean().item() - data.mean[0]) < 1e-6 and abs(raw.std().item() - data.std[0]) < 1e-6
    expected = (
        torch.nn.functional.interpolate(data.val_x, size=(16, 16), mode="bilinear", align_corners=False) - data.mean[0]
    ) / data.std[0]
    assert torch.allclose(x, expected, atol=1e-6)


def write_cifar(root, name="cifar10", n_train=20, n_test=10, seed=0):
    """A tiny data set in torchvision's python-pickle layout."""
    rng = np.random.default_rng(seed)
    folder, train_files, label_key, classes = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], b"labels", 10)
        if name == "cifar10"
        else ("cifar-100-python", ["train"], b"fine_labels", 100)
    )
    test_files = ["test_batch"] if name == "cifar10" else ["test"]
    (root / folder).mkdir(parents=True)
    for fname, n in [(f, n_train) for f in train_files] + [(f, n_test) for f in test_files]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
        }
        with open(root / folder / fname, "wb") as f:
            pickle.dump(batch, f)
    return root


@pytest.mark.parametrize("name, classes, n_train", [("cifar10", 10, 5 * 20), ("cifar100", 100, 20)])
def test_cifar_from_pickle_batches(tmp_path, name, classes, n_train):
    root = write_cifar(tmp_path, name)
    data = load_dataset(name, 32, str(root))
    assert (data.n_train, data.n_val, data.num_classes) == (n_train, 10, classes)
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    with open(root / folder / ("test_batch" if name == "cifar10" else "test"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    first = raw[b"data"][0].reshape(3, 32, 32) / 255.0  # the layout: 1024 red, then green, then blue values, row-major
    assert torch.allclose(data.val_x[0], torch.tensor(first, dtype=torch.float32))
    x, _ = next(data.val_batches(4, 32))
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    assert torch.allclose(x[0], (torch.tensor(first, dtype=torch.float32) - mean) / std, atol=1e-6)
    # data_dir may also point at the batches folder itself
    assert load_dataset(name, 32, str(root / folder)).n_train == n_train


def test_cifar_augmentation_is_a_padded_crop_and_a_flip():
    """Each augmented image equals some window of the zero-padded image, maybe mirrored; windows vary."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    data = TensorData(
        x, torch.zeros(64, dtype=torch.long), x[:1], torch.zeros(1, dtype=torch.long), 10, crop_pad=2, flip=True
    )
    out = data._augment(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts, flips = set(), 0
    for i in range(64):
        windows = [(dy, dx, padded[i, :, dy : dy + 8, dx : dx + 8]) for dy in range(5) for dx in range(5)]
        match = [
            (dy, dx, f) for dy, dx, w in windows for f in (False, True) if torch.equal(out[i], w.flip(2) if f else w)
        ]
        assert match, f"image {i} is no padded crop"
        shifts.add(match[0][:2])
        flips += match[0][2]
    assert len(shifts) > 10 and 10 < flips < 54


def test_missing_or_malformed_cifar_names_path_and_layout(tmp_path):
    with pytest.raises(
        DataError,
        match=r"expected cifar-10-batches-py/ with data_batch_1, .* "
        r"missing: data_batch_1, .*Set download: true",
    ):
        load_dataset("cifar10", 32, str(tmp_path / "nowhere"))
    root = write_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR batch"):
        load_dataset("cifar10", 32, str(root))


def write_imagefolder(root, classes=("ant", "bee", "cat"), per_class=(6, 3)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_imagefolder_tree(tmp_path):
    root = write_imagefolder(tmp_path)
    data = load_dataset("imagefolder", 16, str(root))
    data.workers = 0
    data.to("cpu")
    assert (data.num_classes, data.n_train, data.n_val) == (3, 18, 9)
    xs, ys = zip(*data.train_batches(8, torch.Generator().manual_seed(0), 16))
    assert torch.cat(xs).shape == (18, 3, 16, 16) and sorted(torch.cat(ys).tolist()) == [0] * 6 + [1] * 6 + [2] * 6
    x, y = next(data.val_batches(9, 16))
    assert x.shape == (9, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_imagefolder_errors_name_what_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"expected train/ with one folder of images per class"):
        load_dataset("imagefolder", 16, str(tmp_path))
    root = write_imagefolder(tmp_path / "a")
    (root / "val" / "dog").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(root / "val" / "dog" / "0.png")
    with pytest.raises(DataError, match=r"train/ and val/ must hold the same class folders"):
        load_dataset("imagefolder", 16, str(root))


def test_synthetic_is_random_tensors_of_the_asked_size():
    data = load_dataset("synthetic", 24, train_samples=40, val_samples=8)
    assert data.train_x.shape == (40, 3, 24, 24) and data.n_val == 8 and data.num_classes == 10
