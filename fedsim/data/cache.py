"""A machine-wide cache of loaded datasets, memory-mapped by every process that reads it.

Every process of a run needs the dataset: the server and each Ray actor. Loading it there costs
each of them the same work again (digits: 0.7 s, nearly all of it importing scikit-learn;
Fashion-MNIST: 0.9 s of gunzip and standardisation) and a private copy of the arrays
(Fashion-MNIST: 210 MiB per process). The first load writes the standardised arrays as ``.npy``
files into ``<cache_dir>/<key>/``; every later load, in any process or run, memory-maps them
copy-on-write. The pages then come from the operating system's page cache, which all processes
share: N actors hold one copy of the data, not N, and none of them repeats the parsing.

A built-in dataset opts in by passing its loader and a key: a JSON-able description of
everything its arrays depend on (its options and the identity of its source files). Writes are
atomic (a temporary directory renamed into place), so a crash or two processes building the
same entry at once never leave a half-written one under the real name; an unreadable entry is
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.splits import ArrayDataset, DatasetSplits

# Bump when the layout of an entry (or what a key means) changes, so old entries stop matching.
CACHE_FORMAT = 1
ARRAYS = ("train_x", "train_y", "test_x", "test_y")
META_FILE = "meta.json"

log = logging.getLogger("fedsim")


def entry_name(key: dict[str, Any]) -> str:
    """The directory name of ``key``'s entry: a hash of the key and the cache format."""
    text = json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_splits(
    cache_dir: str | None, key: dict[str, Any] | None, load: Callable[[], DatasetSplits]
) -> DatasetSplits:
    """The dataset ``load`` returns, from the cache entry of ``key`` when there is one.

    Parameters
    ----------
    cache_dir : str or None
        Where entries live; ``None`` (or an empty string) turns the cache off.
    key : dict or None
        Everything the arrays depend on; ``None`` means "cannot tell" (e.g. the source files
        are missing), and the dataset is loaded, with whatever error that raises.
    load : callable
        Loads the dataset from its source.
    """
    if not cache_dir or key is None:
        return load()
    entry = Path(cache_dir).expanduser() / entry_name(key)
    if entry.is_dir():
        try:
            return read_entry(entry)
        except (OSError, ValueError, KeyError) as err:
            log.warning("dataset cache: rebuilding unreadable %s (%s)", entry, type(err).__name__)
            shutil.rmtree(entry, ignore_errors=True)
    splits = load()
    try:
        write_entry(entry, splits, key)
    except OSError as err:  # a read-only or full disk costs speed, never the run
        log.warning("dataset cache: cannot write %s (%s)", entry, err)
        return splits
    return read_entry(entry)


def write_entry(entry: Path, splits: DatasetSplits, key: dict[str, Any]) -> None:
    """Write ``splits`` as ``entry`` atomically (a temporary directory renamed into place)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        arrays = dict(zip(ARRAYS, (splits.train.x, splits.train.y, splits.test.x, splits.test.y)))
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        meta = {
            "name": splits.name, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "classes": list(splits.classes), "key": key,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():  # another process's identical entry won the race: keep it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_entry(entry: Path) -> DatasetSplits:
    """Memory-map an entry copy-on-write (shared pages; a write would stay private)."""
    meta = json.loads((entry / META_FILE).read_text())
    train_x, train_y, test_x, test_y = (
        np.asarray(np.load(entry / f"{name}.npy", mmap_mode="c")) for name in ARRAYS
    )  # plain ndarray views of the maps (np.memmap would tag along into every slice)
    return DatasetSplits(
        name=meta["name"],
        train=ArrayDataset(train_x, train_y),
        test=ArrayDataset(test_x, test_y),
        num_classes=int(meta["num_classes"]),
        input_shape=tuple(meta["input_shape"]),
        classes=tuple(meta["classes"]),
    )
