"""Data sets as train / val / test tensors.

The embedded default is scikit-learn's bundled digits (1,797 8x8 images, 10
classes), split once with a fixed, stratified split so that every run and
every Monte-Carlo trial sees the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.errors import StageError

DATASETS = ("digits",)


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
              test_fraction: float = 0.2, split_seed: int = 0) -> DataSplits:
    """Load a data set by its config name."""
    if name == "digits":
        return load_digits(val_fraction=val_fraction, test_fraction=test_fraction,
                           split_seed=split_seed, as_images=as_images)
    raise StageError(f"data.name: got {name!r}; allowed: {', '.join(DATASETS)}")


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator | None = None):
    """Yield (x, y) mini-batches; shuffled by `generator` when one is given."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
