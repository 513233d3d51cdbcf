"""The built-in Digits dataset (the containers it loads into are :mod:`fedsim.data.splits`).

Digits is the UCI optical handwritten digits set (Alpaydin & Kaynak 1998) as bundled with
scikit-learn: 1797 grey-scale 8x8 images with values 0..16. It needs no download, which makes it
the default for tests and debug runs.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import numpy as np

from fedsim.data.cache import cached_splits
from fedsim.data.splits import ArrayDataset, DatasetError, DatasetSplits, standardize_channels


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
