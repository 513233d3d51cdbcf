"""The array containers every fedsim dataset loads into, and the built-in Digits dataset.

A dataset is loaded once into memory as a normalized ``float32`` image tensor ``(N, C, H, W)``
plus ``int64`` labels, split into train and test. Keeping each split as two arrays is what lets
the partitioners hand out index arrays instead of per-client copies.

Digits is the UCI optical handwritten digits set (Alpaydin & Kaynak 1998) as bundled with
scikit-learn: 1797 grey-scale 8x8 images with values 0..16. It needs no download, which makes it
the default for tests and debug runs.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import numpy as np

from fedsim.errors import UserInputError


class DatasetError(UserInputError):
    """A dataset cannot be loaded or is malformed; one line naming the file or field."""


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Samples held as two in-memory arrays.

    Parameters
    ----------
    x : np.ndarray
        Normalized images, ``float32`` of shape ``(N, C, H, W)``.
    y : np.ndarray
        Class labels, ``int64`` of shape ``(N,)``.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim != 4:
            raise DatasetError(
                f"ArrayDataset: x must be float32 (N, C, H, W), got {self.x.dtype} {self.x.shape}"
            )
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise DatasetError(
                f"ArrayDataset: y must be int64 ({len(self.x)},), got {self.y.dtype} {self.y.shape}"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A loaded dataset: train and test splits plus what a model builder needs to know about them.

    Parameters
    ----------
    name : str
        Short identifier, e.g. ``"digits"``.
    train, test : ArrayDataset
        The two splits, normalized with statistics of ``train`` only.
    num_classes : int
        Number of label values; labels lie in ``[0, num_classes)``.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of one sample.
    classes : tuple[str, ...]
        Human-readable class names, indexed by label.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]


def standardize_channels(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardize both splits per channel with the mean and std of ``train``.

    Test statistics are never looked at: using them would leak the test set into preprocessing.

    Parameters
    ----------
    train, test : np.ndarray
        Images of shape ``(N, C, H, W)`` already scaled to ``[0, 1]``.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``float32`` arrays of the same shapes.
    """
    mean = train.mean(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = train.std(axis=(0, 2, 3), dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)  # a constant channel would divide by zero
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class Digits:
    """scikit-learn's 8x8 handwritten digits, split into stratified train and test sets.

    Parameters
    ----------
    test_fraction : float
        Share of the 1797 samples held out for testing, in ``(0, 1)``.
    split_seed : int
        Seed of the stratified train/test split.
    cache_dir : str or None
        The machine's dataset cache (:mod:`fedsim.data.cache`); ``None``: load every time.
    """

    test_fraction: float = 0.2
    split_seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise DatasetError(f"digits: test_fraction must be in (0, 1), got {self.test_fraction}")

    def load(self) -> DatasetSplits:
        """Load, split and standardize the digits (from the cache once they have been).

        Returns
        -------
        DatasetSplits
            ``input_shape`` is ``(1, 8, 8)``; the default split is 1437 train / 360 test.
        """
        from fedsim.data.cache import cached_splits  # it builds on this module's containers

        key = {
            "dataset": "digits", "test_fraction": self.test_fraction,
            "split_seed": self.split_seed,
            # The data and the split come from scikit-learn; its version is part of them.
            "scikit-learn": importlib.metadata.version("scikit-learn"),
        }
        return cached_splits(self.cache_dir, key, self._load)

    def _load(self) -> DatasetSplits:
        # Imported here: scikit-learn takes 0.7 s to import, paid only on a cache miss.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)  # pixel values are 0..16
        y = bunch.target.astype(np.int64)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=self.test_fraction, stratify=y, random_state=self.split_seed
        )
        x_train, x_test = standardize_channels(x_train, x_test)
        return DatasetSplits(
            name="digits",
            train=ArrayDataset(x_train, y_train),
            test=ArrayDataset(x_test, y_test),
            num_classes=10,
            input_shape=(1, 8, 8),
            classes=tuple(str(d) for d in range(10)),
        )
