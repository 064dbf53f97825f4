"""MNIST, Fashion-MNIST and CIFAR-10 read through torchvision's own classes from
tiny files in the real on-disk formats, and CIFAR-10's crop-flip augmentation."""

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision.datasets

from stages.data import augment, load_data
from stages.errors import StageError

PER_CLASS = {True: 4, False: 2}  # images per class: official train (40) / test (20)
VAL_FRACTION = 0.25  # 10 of the 40 training images: exactly one per class when stratified
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _labels(train: bool) -> np.ndarray:
    return np.tile(np.arange(10, dtype=np.uint8), PER_CLASS[train])  # (40,) or (20,)


def _values(labels: np.ndarray) -> np.ndarray:
    """Pixel value of each constant image: 20 * label + occurrence, unique in its split."""
    return (20 * labels + np.arange(len(labels)) // 10).astype(np.uint8)


def _channels(v: np.ndarray) -> np.ndarray:
    """CIFAR-10 test images per channel (N, 3): R = v, G = v // 2, B = 255 - v."""
    return np.stack([v, v // 2, 255 - v], axis=1)


def _write_idx(folder, train: bool) -> None:
    """IDX files as torchvision 0.29's MNIST reads them: raw, uncompressed, big-endian headers.

    MNIST._check_exists only needs the four uncompressed files to exist (md5 None).
    """
    prefix = "train" if train else "t10k"
    labels = _labels(train)
    images = np.repeat(_values(labels), 28 * 28)  # (N * 784,) uint8
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, len(labels)) + labels.tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    for folder in ("MNIST", "FashionMNIST"):
        for train in (True, False):
            _write_idx(tmp_path / folder / "raw", train)
    return tmp_path


def _pickle(path, obj) -> str:
    path.write_bytes(pickle.dumps(obj))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_batch(labels: np.ndarray, values: np.ndarray) -> dict:
    """One batch dict. The real files are Python 2 pickles whose str keys torchvision
    reads back (encoding="latin1") as "data" and "labels"; Python 3 str keys match that."""
    data = np.repeat(_channels(values), 1024, axis=1)  # (N, 3072) uint8, channel-major
    return {"batch_label": "synthetic", "labels": labels.tolist(), "data": data}


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """cifar-10-batches-py as torchvision's CIFAR10 reads it (pickled dicts, data uint8 (N, 3072)).

    CIFAR10 checks each batch and batches.meta against the md5 of the real
    files, kept in its class attributes train_list, test_list and meta. No
    synthetic file can match them, so the test points those tables at the md5
    of the files it wrote; torchvision's own check_integrity then runs
    unchanged and passes, and the loader under test is not altered.
    """
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    labels, test_labels = _labels(True), _labels(False)
    parts = zip(np.split(labels, 5), np.split(_values(labels), 5))  # 8 images per batch
    train_list = [[f"data_batch_{i}", _pickle(folder / f"data_batch_{i}", _cifar_batch(*part))]
                  for i, part in enumerate(parts, start=1)]
    test_list = [["test_batch", _pickle(folder / "test_batch",
                                        _cifar_batch(test_labels, _values(test_labels)))]]
    meta_md5 = _pickle(folder / "batches.meta", {"label_names": [f"c{k}" for k in range(10)]})
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta",
                        {"filename": "batches.meta", "key": "label_names", "md5": meta_md5})
    return tmp_path


def _raw(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The uint8 value of channel 0 that each normalized constant image was made from."""
    return torch.round((x.reshape(len(x), -1)[:, 0] * std + mean) * 255).long()


def _check_split(data, mean: float, std: float) -> None:
    """Labels travel with their images; val is one per class and disjoint from train."""
    raw_train, raw_val = _raw(data.x_train, mean, std), _raw(data.x_val, mean, std)
    assert torch.equal(raw_train // 20, data.y_train) and torch.equal(raw_val // 20, data.y_val)
    everything = sorted(_values(_labels(True)).tolist())
    assert sorted(torch.cat([raw_train, raw_val]).tolist()) == everything
    assert torch.equal(torch.bincount(data.y_val, minlength=10), torch.ones(10, dtype=torch.int64))


@pytest.mark.parametrize("name, mean, std", [("mnist", 0.1307, 0.3081),
                                             ("fashion-mnist", 0.2860, 0.3530)])
def test_mnist_like_through_torchvision(mnist_root, name, mean, std):
    data = load_data(name, as_images=True, val_fraction=VAL_FRACTION, root=mnist_root)
    assert (data.num_classes, data.input_shape, data.augmentation) == (10, (1, 28, 28), "none")
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_val.shape == (10, 1, 28, 28)
    assert data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    # The official test set, in file order: constant image v maps to (v / 255 - mean) / std.
    labels = _labels(False)
    expected = (torch.from_numpy(_values(labels)).float() / 255 - mean) / std
    assert torch.allclose(data.x_test, expected.reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28))
    assert torch.equal(data.y_test, torch.from_numpy(labels).long())
    _check_split(data, mean, std)

    flat = load_data(name, as_images=False, val_fraction=VAL_FRACTION, root=mnist_root)
    assert flat.input_shape == (784,) and flat.x_train.shape == (30, 784)
    assert torch.equal(flat.x_train, data.x_train.reshape(30, 784))


def test_split_fixed_by_split_seed(mnist_root):
    def split(seed):
        return load_data("mnist", as_images=True, val_fraction=VAL_FRACTION, split_seed=seed,
                         root=mnist_root)

    a, b, c = split(3), split(3), split(4)
    assert torch.equal(a.x_val, b.x_val) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_val, c.x_val)


def test_cifar10_through_torchvision(cifar_root):
    data = load_data("cifar10", as_images=True, val_fraction=VAL_FRACTION, root=cifar_root)
    assert (data.num_classes, data.input_shape, data.augmentation) == (10, (3, 32, 32), "crop-flip")
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_val.shape == (10, 3, 32, 32)
    assert data.x_test.shape == (20, 3, 32, 32) and data.x_test.dtype == torch.float32
    labels = _labels(False)
    raw = torch.from_numpy(_channels(_values(labels))).float()  # (20, 3)
    expected = (raw / 255 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    assert torch.allclose(data.x_test, expected[:, :, None, None].expand(-1, -1, 32, 32))
    assert torch.equal(data.y_test, torch.from_numpy(labels).long())
    _check_split(data, CIFAR_MEAN[0], CIFAR_STD[0])
    # An MLP flattens its own input, so CIFAR-10 stays in image layout for augmentation.
    flat = load_data("cifar10", as_images=False, val_fraction=VAL_FRACTION, root=cifar_root)
    assert flat.input_shape == (3, 32, 32)


def test_val_too_small_for_stratification(mnist_root):
    with pytest.raises(StageError, match="data.val_fraction: got 0.2"):
        # 8 of 40 images cannot hold one of each of 10 classes
        load_data("mnist", as_images=True, val_fraction=0.2, root=mnist_root)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_names_root_and_download(tmp_path, name):
    for root in (None, tmp_path, tmp_path / "absent"):
        with pytest.raises(StageError, match="data.root") as err:
            load_data(name, as_images=True, root=root)
        assert "data.download" in str(err.value) and name in str(err.value)
        if root is not None:
            assert str(root) in str(err.value)


def test_unknown_name_lists_allowed():
    with pytest.raises(StageError, match="data.name.*cifar10"):
        load_data("imagenet", as_images=True)


def _candidates(x: torch.Tensor) -> torch.Tensor:
    """Every crop of x padded by 4, and its mirror: (81 * 2, B, C, H, W)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    crops = [padded[:, :, dy:dy + h, dx:dx + w] for dy in range(9) for dx in range(9)]
    return torch.stack(crops + [crop.flip(3) for crop in crops])


def test_crop_flip_is_a_padded_crop_or_its_mirror():
    x = torch.rand(2000, 1, 6, 5, generator=torch.Generator().manual_seed(1)) + 1.0  # no zeros
    out = augment(x, "crop-flip", torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    match = (_candidates(x) == out).flatten(2).all(2)  # (162, B)
    assert match.any(0).all()  # every sample is one shifted copy or its mirror
    assert match.sum(0).eq(1).all()  # ... and exactly one, so the tallies below are exact
    which = match.float().argmax(0)
    flipped = which >= 81
    assert 850 < flipped.sum() < 1150  # probability 0.5
    assert (which % 81 != 40).any()  # some sample is shifted (index 40 is the offset (4, 4))
    centred_mirror = which == 81 + 40
    assert centred_mirror.any()
    assert torch.equal(out[centred_mirror], x[centred_mirror].flip(3))
    assert not torch.equal(out, x)


def test_crop_flip_randomness_from_generator_only():
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a = augment(x, "crop-flip", torch.Generator().manual_seed(5))
    b = augment(x, "crop-flip", torch.Generator().manual_seed(5))
    c = augment(x, "crop-flip", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != x).flatten(1).any(1).any()


def test_no_augmentation_returns_input_itself():
    x = torch.zeros(2, 3, 4, 4)
    assert augment(x, "none", torch.Generator()) is x
    with pytest.raises(StageError, match="augmentation.*crop-flip"):
        augment(x, "mixup", torch.Generator())
