"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): 70,000 grey-scale 28x28 images
of 10 kinds of clothing, 60,000 train / 10,000 test, read from the four upstream IDX files.

The files are looked for locally first (an explicit directory, ``$FEDSIM_DATA``, the Debian
package ``dataset-fashion-mnist``, the user cache) and downloaded into the cache only as a last
resort, so machines without network work whenever the package or the files are present.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.data.cache import cached_splits
from fedsim.data.splits import ArrayDataset, DatasetError, DatasetSplits
from fedsim.data.idx import read_idx

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Where the Debian/Ubuntu package dataset-fashion-mnist installs the files.
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
HOW_TO_GET = "apt-get install dataset-fashion-mnist, or put the four IDX .gz files in $FEDSIM_DATA"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedsim/fashion-mnist``, defaulting to ``~/.cache/fedsim/fashion-mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedsim" / "fashion-mnist"


def candidate_dirs(data_dir: str | None) -> list[Path]:
    """Directories searched for the four files, in order.

    An explicit ``data_dir`` is the only candidate: a user who names a directory means that one,
    and silently reading another copy would hide a typo.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if env := os.environ.get("FEDSIM_DATA"):
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    return dirs + [SYSTEM_DIR, user_cache_dir()]


def _locate(directory: Path, gz_name: str) -> Path | None:
    """The file in ``directory``, gzip or unpacked (torchvision's ``raw/`` folder keeps both)."""
    for name in (gz_name, gz_name.removesuffix(".gz")):
        if (directory / name).is_file():
            return directory / name
    return None


def find_files(dirs: list[Path]) -> dict[str, Path] | None:
    """The first directory holding all four files (two places could hold different versions)."""
    for directory in dirs:
        found = {key: _locate(directory, name) for key, name in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def download(
    directory: Path, base_url: str = UPSTREAM_URL, timeout: float = 30.0
) -> dict[str, Path]:
    """Fetch the four files into ``directory``.

    Each is written to a temp file and renamed, so an interrupted download never leaves a truncated
    file under the real name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, name in FILES.items():
        target = directory / name
        if not target.is_file():
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
            try:
                with (
                    os.fdopen(fd, "wb") as out,
                    urllib.request.urlopen(base_url + name, timeout=timeout) as resp,
                ):
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        paths[key] = target
    return paths


def standardize_uint8(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale 0..255 pixels to [0, 1] and standardize both splits with the train mean and std.

    The moments are exact integer sums over 1M-pixel chunks and the conversion is one ``float32``
    multiply plus an in-place add: a float64 copy or a lookup table would cost 376 MB and most of
    a second for the 47M training pixels.

    Parameters
    ----------
    train, test : np.ndarray
        ``uint8`` images of shape ``(N, H, W)``.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``float32`` arrays of shape ``(N, 1, H, W)``.
    """
    flat = train.reshape(-1)
    total = float(flat.sum(dtype=np.uint64))
    squares = 0.0
    for start in range(0, flat.size, 1 << 20):
        chunk = flat[start : start + (1 << 20)].astype(np.float64)
        squares += float(chunk @ chunk)  # exact: each chunk's sum stays far below 2**53
    mean = total / max(flat.size, 1)
    std = float(np.sqrt(max(squares / max(flat.size, 1) - mean**2, 0.0))) or 1.0
    # (pixel - mean) / std on the 0..255 scale equals it on the [0, 1] scale.
    scale, shift = np.float32(1.0 / std), np.float32(-mean / std)
    out = []
    for images in (train, test):
        x = np.multiply(images[:, None], scale, dtype=np.float32)  # (N, H, W) -> (N, 1, H, W)
        x += shift
        out.append(x)
    return out[0], out[1]


def file_identity(path: Path) -> list:
    """``[absolute path, size, modification time in ns]``: changes when the file is replaced."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _checked(images: np.ndarray, labels: np.ndarray, split: str, paths: dict[str, Path]) -> None:
    source = paths[f"{split}_images"].parent
    if (
        images.ndim != 3
        or images.dtype != np.uint8
        or labels.ndim != 1
        or len(labels) != len(images)
    ):
        raise DatasetError(
            f"fashion-mnist: {split} files in {source} hold images {images.dtype}{images.shape} "
            f"and labels {labels.shape}; expected uint8 (N, 28, 28) and (N,)"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise DatasetError(
            f"fashion-mnist: {split} labels in {source} reach {labels.max()}, expected 0..9"
        )


@dataclass(frozen=True)
class FashionMNIST:
    """Fashion-MNIST from local IDX files, downloaded into the user cache if allowed and needed.

    Parameters
    ----------
    data_dir : str or None
        Directory holding the four files. ``None`` searches ``$FEDSIM_DATA``,
        ``$FEDSIM_DATA/fashion-mnist``, ``/usr/share/datasets/fashion-mnist`` and
        ``~/.cache/fedsim/fashion-mnist`` (under ``$XDG_CACHE_HOME`` if set).
    download : bool
        Fetch missing files from the upstream mirror into ``data_dir`` (or the user cache).
    cache_dir : str or None
        The machine's dataset cache (:mod:`fedsim.data.cache`); ``None``: read the IDX files
        every time.
    """

    data_dir: str | None = None
    download: bool = True
    cache_dir: str | None = None

    def load(self) -> DatasetSplits:
        """Read, check and standardize the two splits (or map them from the dataset cache).

        Returns
        -------
        DatasetSplits
            ``input_shape`` is ``(1, 28, 28)``; the full dataset is 60,000 train / 10,000 test.

        Raises
        ------
        DatasetError
            If the files are missing and cannot be downloaded, or any file is malformed.
        """
        paths = find_files(candidate_dirs(self.data_dir))
        key = None
        if paths is not None:  # the files found, by where they are, their size and their age
            files = {name: file_identity(path) for name, path in paths.items()}
            key = {"dataset": "fashion_mnist", "files": files}
        return cached_splits(self.cache_dir, key, lambda: self._read(paths))

    def _read(self, paths: dict[str, Path] | None) -> DatasetSplits:
        if paths is None:
            paths = self._download(candidate_dirs(self.data_dir))
        arrays = {key: read_idx(path) for key, path in paths.items()}
        _checked(arrays["train_images"], arrays["train_labels"], "train", paths)
        _checked(arrays["test_images"], arrays["test_labels"], "test", paths)
        x_train, x_test = standardize_uint8(arrays["train_images"], arrays["test_images"])
        return DatasetSplits(
            name="fashion_mnist",
            train=ArrayDataset(x_train, arrays["train_labels"].astype(np.int64)),
            test=ArrayDataset(x_test, arrays["test_labels"].astype(np.int64)),
            num_classes=len(CLASSES),
            input_shape=(1, *x_train.shape[2:]),
            classes=CLASSES,
        )

    def _download(self, searched: list[Path]) -> dict[str, Path]:
        where = ", ".join(str(d) for d in searched)
        if not self.download:
            raise DatasetError(
                f"fashion-mnist: files not found in {where} and download=False; {HOW_TO_GET}"
            )
        target = Path(self.data_dir).expanduser() if self.data_dir is not None else user_cache_dir()
        try:
            return download(target)
        except (
            OSError,
            urllib.error.URLError,
        ) as exc:  # URLError and socket timeouts are OSErrors too
            reason = str(getattr(exc, "reason", exc)).replace("\n", " ")
            raise DatasetError(
                f"fashion-mnist: files not found in {where} and download from {UPSTREAM_URL} "
                f"failed ({reason}); {HOW_TO_GET}"
            ) from None
