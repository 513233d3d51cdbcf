"""The machine-wide dataset cache: built once, memory-mapped after, rebuilt when it must be."""

import os
from pathlib import Path

import numpy as np

from fedsim.data.cache import cached_splits, entry_name
from fedsim.data.splits import ArrayDataset, DatasetSplits
from fedsim.data.datasets import Digits
from fedsim.data.fashion_mnist import FashionMNIST
from tests.helpers import write_fashion_files


def tiny_splits(offset: float = 0.0) -> DatasetSplits:
    x = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2) + offset
    return DatasetSplits(
        name="tiny", train=ArrayDataset(x, np.array([0, 1])), test=ArrayDataset(x[:1], np.array([1])),
        num_classes=2, input_shape=(1, 2, 2), classes=("a", "b"),
    )


class CountingLoader:
    def __init__(self, offset: float = 0.0) -> None:
        self.calls, self.offset = 0, offset

    def __call__(self) -> DatasetSplits:
        self.calls += 1
        return tiny_splits(self.offset)


def test_first_load_builds_the_entry_and_later_loads_map_it(tmp_path: Path) -> None:
    load = CountingLoader()
    first = cached_splits(str(tmp_path), {"dataset": "tiny"}, load)
    second = cached_splits(str(tmp_path), {"dataset": "tiny"}, load)
    assert load.calls == 1  # the second load never ran the loader
    for got in (first, second):
        np.testing.assert_array_equal(got.train.x, tiny_splits().train.x)
        np.testing.assert_array_equal(got.test.y, [1])
        assert (got.name, got.num_classes, got.input_shape, got.classes) == (
            "tiny", 2, (1, 2, 2), ("a", "b"))
    # A memory map, not a private copy; copy-on-write, so a (stray) write stays in this process.
    assert isinstance(second.train.x.base, np.memmap)
    second.train.x[0, 0, 0, 0] = 99.0
    again = cached_splits(str(tmp_path), {"dataset": "tiny"}, load)
    assert again.train.x[0, 0, 0, 0] == 0.0 and load.calls == 1


def test_another_key_is_another_entry(tmp_path: Path) -> None:
    cached_splits(str(tmp_path), {"dataset": "tiny", "v": 1}, CountingLoader())
    other = cached_splits(str(tmp_path), {"dataset": "tiny", "v": 2}, CountingLoader(offset=5.0))
    assert other.train.x[0, 0, 0, 0] == 5.0
    assert sorted(os.listdir(tmp_path)) == sorted(
        entry_name({"dataset": "tiny", "v": v}) for v in (1, 2))


def test_an_unreadable_entry_is_rebuilt(tmp_path: Path) -> None:
    load = CountingLoader()
    cached_splits(str(tmp_path), {"dataset": "tiny"}, load)
    entry = tmp_path / entry_name({"dataset": "tiny"})
    (entry / "train_x.npy").write_bytes(b"\x93NUMPY truncated")
    rebuilt = cached_splits(str(tmp_path), {"dataset": "tiny"}, load)
    assert load.calls == 2
    np.testing.assert_array_equal(rebuilt.train.x, tiny_splits().train.x)


def test_no_cache_dir_or_no_key_loads_every_time(tmp_path: Path) -> None:
    load = CountingLoader()
    cached_splits(None, {"dataset": "tiny"}, load)
    cached_splits(str(tmp_path), None, load)
    assert load.calls == 2 and os.listdir(tmp_path) == []


def test_cached_digits_are_the_digits(tmp_path: Path) -> None:
    plain = Digits().load()
    for _ in range(2):  # the miss, then the hit
        cached = Digits(cache_dir=str(tmp_path)).load()
        for a, b in ((plain.train, cached.train), (plain.test, cached.test)):
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
    assert len(os.listdir(tmp_path)) == 1


def test_replacing_a_fashion_mnist_file_invalidates_its_entry(tmp_path: Path) -> None:
    data, cache = tmp_path / "fmnist", tmp_path / "cache"
    data.mkdir()
    write_fashion_files(data)
    before = FashionMNIST(data_dir=str(data), download=False, cache_dir=str(cache)).load()
    labels = data / "train-labels-idx1-ubyte.gz"
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "a new copy of the file"
    after = FashionMNIST(data_dir=str(data), download=False, cache_dir=str(cache)).load()
    assert len(os.listdir(cache)) == 2  # a second entry, not the stale first one
    np.testing.assert_array_equal(before.train.y, after.train.y)
    np.testing.assert_array_equal(before.train.x, FashionMNIST(data_dir=str(data)).load().train.x)
