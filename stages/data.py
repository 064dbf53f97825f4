"""Data sets as train / val / test tensors.

The embedded default is scikit-learn's bundled digits (1,797 8x8 images, 10
classes), split once with a fixed, stratified split so that every run and
every Monte-Carlo trial sees the same examples. MNIST, Fashion-MNIST and
CIFAR-10 are read from disk through torchvision's own data set classes and
held in memory as tensors; CIFAR-10 comes with crop-and-flip augmentation
for training batches (`augment`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from stages.errors import StageError

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# (image shape (C, H, W), classes) of each data set, for building models without loading data
DATA_SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10),
               "fashion-mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10)}
AUGMENTATIONS = ("none", "crop-flip")

# Per-channel mean and std of the official training images, pixels scaled to
# [0, 1], taken over all pixels of the set. MNIST's pair is the one in
# pytorch/examples (mnist/main.py); Fashion-MNIST's is the same statistic over
# its 60,000 training images; CIFAR-10's is the whole-set std over its 50,000
# training images (see facebookarchive/fb.resnet.torch#180 and
# kuangliu/pytorch-cifar#129; the often-seen (0.2023, 0.1994, 0.2010) is the
# mean of per-image stds instead).
_TORCHVISION_SETS = {
    # name: (torchvision class, folder under root, mean, std)
    "mnist": ("MNIST", "MNIST/raw", (0.1307,), (0.3081,)),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465),
                (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class DataSplits:
    """Tensors for one data set. x: (N, *input_shape) float32, y: (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augmentation: str = "none"
    """What `augment` does to training batches: "none" or "crop-flip"."""

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise StageError(f"split: got {name!r}; allowed: 'train', 'val', 'test'")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def load_digits(*, val_fraction: float = 0.2, test_fraction: float = 0.2,
                split_seed: int = 0, as_images: bool = False) -> DataSplits:
    """scikit-learn digits, pixel values scaled from [0, 16] to [0, 1].

    as_images gives x of shape (N, 1, 8, 8) for convolutional models, else (N, 64).
    The split is stratified by class and fixed by split_seed.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    for field, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 0.5:
            raise StageError(f"data.{field}: got {value}; allowed: a fraction in (0, 0.5)")
    bunch = sk_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=split_seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1.0 - test_fraction), stratify=y_rest,
        random_state=split_seed)
    shape = (1, 8, 8) if as_images else (64,)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).reshape(len(a), *shape)

    return DataSplits(
        tensor(x_train), torch.from_numpy(y_train), tensor(x_val), torch.from_numpy(y_val),
        tensor(x_test), torch.from_numpy(y_test), num_classes=10, input_shape=shape)


def load_data(name: str, *, as_images: bool, val_fraction: float = 0.2,
              test_fraction: float = 0.2, split_seed: int = 0, root: str | Path | None = None,
              download: bool = False) -> DataSplits:
    """Load a data set by its config name.

    test_fraction applies to digits only (the torchvision sets have an official
    test set); root and download apply to the torchvision sets only.
    """
    if name == "digits":
        return load_digits(val_fraction=val_fraction, test_fraction=test_fraction,
                           split_seed=split_seed, as_images=as_images)
    if name in _TORCHVISION_SETS:
        return load_torchvision(name, root=root, download=download, val_fraction=val_fraction,
                                split_seed=split_seed, as_images=as_images)
    raise StageError(f"data.name: got {name!r}; allowed: {', '.join(DATASETS)}")


def load_torchvision(name: str, *, root: str | Path | None, download: bool = False,
                     val_fraction: float = 0.2, split_seed: int = 0,
                     as_images: bool = False) -> DataSplits:
    """MNIST, Fashion-MNIST or CIFAR-10 from `root`, normalized per channel.

    x is float32 (N, 1, 28, 28) for the MNIST-like sets, flattened to (N, 784)
    unless as_images; CIFAR-10 is always (N, 3, 32, 32), since crop-flip needs
    the image layout and the MLP flattens its input itself. `test` is the
    official test set; `val` is a stratified val_fraction of the official
    train set, fixed by split_seed. test_fraction does not apply here.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 0.5:
        raise StageError(f"data.val_fraction: got {val_fraction}; allowed: a fraction in (0, 0.5)")
    x_rest, y_rest = _read_torchvision(name, root, download, train=True)
    x_test, y_test = _read_torchvision(name, root, download, train=False)
    if math.ceil(val_fraction * len(y_rest)) < 10:
        raise StageError(f"data.val_fraction: got {val_fraction}; {name} has {len(y_rest)} "
                         f"training images, too few for a val split stratified over 10 classes; "
                         f"raise it")
    train_idx, val_idx = train_test_split(
        np.arange(len(y_rest)), test_size=val_fraction, stratify=y_rest.numpy(),
        random_state=split_seed)
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    shape = tuple(x_rest.shape[1:])
    if name != "cifar10" and not as_images:
        shape = (x_rest[0].numel(),)

    def tensor(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *shape)

    return DataSplits(
        tensor(x_rest[train_idx]), y_rest[train_idx], tensor(x_rest[val_idx]), y_rest[val_idx],
        tensor(x_test), y_test, num_classes=10, input_shape=shape,
        augmentation="crop-flip" if name == "cifar10" else "none")


def _read_torchvision(name: str, root: str | Path | None, download: bool,
                      *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One official split as normalized x (N, C, H, W) float32 and y (N,) int64."""
    import torchvision.datasets

    cls_name, folder, mean, std = _TORCHVISION_SETS[name]
    how = (f"set data.download=true on a machine with internet, or put the torchvision files "
           f"for {name} under <data.root>/{folder}")
    if root is None or str(root) == "":
        raise StageError(f"data.root: not set; {name} is read from disk: {how}")
    try:
        dataset = getattr(torchvision.datasets, cls_name)(root, train=train, download=download)
    except RuntimeError as err:
        if "not found" not in str(err):
            raise
        raise StageError(f"data.root: no usable {name} files under {str(root)!r} "
                         f"(torchvision: {err}); {how}") from None
    data = torch.as_tensor(np.asarray(dataset.data))  # uint8 (N, H, W) or (N, H, W, C)
    data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    mean_t = torch.tensor(mean).reshape(1, -1, 1, 1)
    std_t = torch.tensor(std).reshape(1, -1, 1, 1)
    x = ((data.float() / 255.0 - mean_t) / std_t).contiguous()
    return x, torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of a batch x (B, C, H, W); returns the same shape.

    "none" returns x itself. "crop-flip" takes, per sample, a random (H, W) crop
    of x zero-padded by 4 on each side (x is normalized, so the padding is the
    mean colour), then mirrors it left-right with probability 0.5. All draws
    come from `generator`, on its device; the work is vectorized over the batch.
    """
    if kind == "none":
        return x
    if kind != "crop-flip":
        raise StageError(f"augmentation: got {kind!r}; allowed: {', '.join(AUGMENTATIONS)}")
    b, c, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+8, W+8)
    dev = generator.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))  # (B, C, H, W+8)
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches; shuffled by `generator` when one is given."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
