"""Datasets: Digits split and scaling, IDX reader errors, Fashion-MNIST file search."""

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fedsim.data import fashion_mnist
from fedsim.data.splits import DatasetError
from fedsim.data.datasets import Digits
from fedsim.data.fashion_mnist import FashionMNIST
from fedsim.data.idx import read_idx
from tests.helpers import idx_bytes, write_fashion_files


@pytest.fixture(scope="module")
def digits():
    return Digits().load()


def test_digits_split_sizes_and_shapes(digits) -> None:
    # 1797 samples, test_size=0.2 -> ceil(359.4) = 360 test, 1437 train.
    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.train.x.shape == (1437, 1, 8, 8) and digits.train.x.dtype == np.float32
    assert digits.train.y.dtype == np.int64
    assert (digits.num_classes, digits.input_shape, len(digits.classes)) == (10, (1, 8, 8), 10)


def test_digits_split_is_stratified(digits) -> None:
    totals = np.bincount(digits.train.y, minlength=10) + np.bincount(digits.test.y, minlength=10)
    assert np.all(np.abs(np.bincount(digits.test.y, minlength=10) - 0.2 * totals) <= 1)


def test_digits_standardized_with_train_statistics(digits) -> None:
    assert abs(float(digits.train.x.mean())) < 1e-5
    assert abs(float(digits.train.x.std()) - 1.0) < 1e-5
    assert abs(float(digits.test.x.mean())) < 0.1  # same distribution, but not forced to exactly 0


def test_digits_rejects_bad_test_fraction() -> None:
    with pytest.raises(DatasetError, match="test_fraction"):
        Digits(test_fraction=1.0)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path: Path, dtype, compress: bool) -> None:
    values = np.arange(24).reshape(2, 3, 4)
    array = (values if dtype == np.uint8 else values - 5).astype(dtype)  # negatives where allowed
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(idx_bytes(array)) if compress else idx_bytes(array))
    result = read_idx(path)
    assert result.dtype == np.dtype(dtype) and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


def test_idx_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "cut-labels.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="cut-labels.gz.*truncated") as err:
        read_idx(path)
    assert "\n" not in str(err.value)


def test_idx_truncated_payload_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short.idx"
    path.write_bytes(idx_bytes(np.arange(10, dtype=np.uint8))[:-3])
    with pytest.raises(DatasetError, match=r"short.idx.*\(10,\).*holds 7 \(truncated\)"):
        read_idx(path)


def test_idx_bad_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "magic.gz"
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + bytes(8)))
    with pytest.raises(DatasetError, match="magic.gz: bad IDX magic"):
        read_idx(path)


def test_idx_unknown_dtype_code(tmp_path: Path) -> None:
    path = tmp_path / "code.idx"
    path.write_bytes(b"\x00\x00\x07\x01" + bytes(4))
    with pytest.raises(DatasetError, match="code.idx: unknown IDX dtype code 0x07"):
        read_idx(path)


def test_idx_garbage_named_gz_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DatasetError, match="garbage.gz: not a gzip file"):
        read_idx(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere.gz"):
        read_idx(tmp_path / "nowhere.gz")


def test_fashion_mnist_found_in_the_system_dir(monkeypatch, tmp_path: Path) -> None:
    # Where Debian's dataset-fashion-mnist puts the files, here holding the tiny ones; no
    # $FEDSIM_DATA and an empty user cache, so the system dir must be where they come from.
    write_fashion_files(tmp_path / "usr-share")
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "usr-share")
    monkeypatch.delenv("FEDSIM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    splits = FashionMNIST(download=False).load()
    assert splits.train.y.tolist() == [0, 9, 3, 3] and splits.test.y.tolist() == [1, 2]


@pytest.mark.skipif(
    not (fashion_mnist.SYSTEM_DIR / fashion_mnist.FILES["test_labels"]).exists(),
    reason=f"real Fashion-MNIST not in {fashion_mnist.SYSTEM_DIR} "
    "(bash .ci/run installs dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_the_system_package(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEDSIM_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    splits = FashionMNIST(download=False).load()
    assert (len(splits.train), len(splits.test)) == (60_000, 10_000)
    assert splits.input_shape == (1, 28, 28) and splits.train.x.shape == (60_000, 1, 28, 28)
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert np.bincount(splits.train.y).tolist() == [6000] * 10  # Fashion-MNIST is exactly balanced
    assert abs(float(splits.train.x.mean(dtype=np.float64))) < 1e-4
    assert abs(float(splits.train.x.std(dtype=np.float64)) - 1.0) < 1e-4


def test_fashion_mnist_tiny_files_in_data_dir(tmp_path: Path) -> None:
    write_fashion_files(tmp_path)
    splits = FashionMNIST(data_dir=str(tmp_path), download=False).load()
    assert splits.train.x.shape == (4, 1, 28, 28) and splits.train.x.dtype == np.float32
    np.testing.assert_allclose(splits.train.x[:2], 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    np.testing.assert_allclose(splits.train.x[2:], -1.0, atol=1e-6)  # (0 - 0.5) / 0.5
    np.testing.assert_allclose(splits.test.x[0], 1.0, atol=1e-6)
    assert splits.train.y.tolist() == [0, 9, 3, 3] and splits.test.y.tolist() == [1, 2]


def test_fashion_mnist_searches_fedsim_data_subdir_first(monkeypatch, tmp_path: Path) -> None:
    write_fashion_files(tmp_path / "fashion-mnist")
    monkeypatch.setenv("FEDSIM_DATA", str(tmp_path))
    assert len(FashionMNIST(download=False).load().train) == 4  # not the 60k system copy


def test_fashion_mnist_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match="download=False.*apt-get install dataset-fashion-mnist"
    ) as err:
        FashionMNIST(data_dir=str(tmp_path), download=False).load()
    assert "\n" not in str(err.value)


def test_fashion_mnist_failed_download_explains_and_leaves_no_partial_file(
    monkeypatch, tmp_path: Path
) -> None:
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", refuse)
    with pytest.raises(DatasetError, match="download from .* failed.*dataset-fashion-mnist"):
        FashionMNIST(data_dir=str(tmp_path / "cache")).load()
    assert list((tmp_path / "cache").iterdir()) == []


def test_fashion_mnist_corrupt_file_names_it(tmp_path: Path) -> None:
    write_fashion_files(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        FashionMNIST(data_dir=str(tmp_path), download=False).load()
