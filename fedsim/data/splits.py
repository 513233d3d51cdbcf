"""The array containers every fedsim dataset loads into.

A dataset is loaded once into memory as a normalized ``float32`` image tensor ``(N, C, H, W)``
plus ``int64`` labels, split into train and test. Keeping each split as two arrays is what lets
the partitioners hand out index arrays instead of per-client copies.
"""

from __future__ import annotations

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
