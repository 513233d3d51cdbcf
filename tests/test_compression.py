"""Update codecs and error feedback: hand-checkable numbers and exact byte counts."""

import io

import numpy as np
import pytest

from fedsim.compression import CompressionConfigError
from fedsim.compression.codecs import (
    HEADER_BYTES_PER_SCALAR,
    Chain,
    Encoded,
    Int8Quantization,
    NoCompression,
    TopK,
    topk_count,
)
from fedsim.compression.error_feedback import ResidualStore, compress_with_feedback


def _update(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal(8).astype(np.float32),
        "fc.weight": (rng.standard_normal((10, 16)) * np.arange(1, 11)[:, None]).astype(np.float32),
    }


def _payload_plus_header(encoded: Encoded) -> int:
    header = HEADER_BYTES_PER_SCALAR * sum(len(v) for v in encoded.meta.values())
    return sum(a.nbytes for a in encoded.arrays.values()) + header


# --- int8 -------------------------------------------------------------------------------------


def test_int8_hand_example() -> None:
    # max|x| = 2.54 -> scale 2.54/127 = 0.02; x/scale = [0, 63.5, -127] exactly in float32.
    # np.rint rounds halves to even: 63.5 -> 64 (and 62.5 -> 62, checked below).
    x = np.array([0.0, 1.27, -2.54], dtype=np.float32)
    encoded = Int8Quantization().encode({"x": x})
    assert encoded.arrays["x/scale"].tolist() == [pytest.approx(0.02)]
    assert encoded.arrays["x/q"].dtype == np.int8
    assert encoded.arrays["x/q"].tolist() == [0, 64, -127]
    half_even = Int8Quantization().encode({"x": np.array([0.0, 1.25, -2.54], np.float32)})
    assert half_even.arrays["x/q"].tolist() == [0, 62, -127]
    decoded = Int8Quantization().decode(encoded)["x"]
    assert decoded.tolist() == pytest.approx([0.0, 1.28, -2.54], abs=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_error_is_at_most_half_a_step(per_channel: bool) -> None:
    update = _update()
    codec = Int8Quantization(per_channel=per_channel)
    encoded = codec.encode(update)
    decoded = codec.decode(encoded)
    for name, x in update.items():
        scale = encoded.arrays[f"{name}/scale"]
        step = scale.reshape((-1,) + (1,) * (x.ndim - 1)) if scale.size > 1 else scale[0]
        assert decoded[name].shape == x.shape and decoded[name].dtype == np.float32
        assert np.all(np.abs(x - decoded[name]) <= step / 2 * (1 + 1e-5) + 1e-7)


def test_int8_per_channel_scales_follow_axis_0_and_skip_1d() -> None:
    encoded = Int8Quantization(per_channel=True).encode(_update())
    fc = _update()["fc.weight"]
    assert encoded.arrays["fc.weight/scale"].shape == (10,)
    np.testing.assert_allclose(encoded.arrays["fc.weight/scale"], np.abs(fc).max(axis=1) / 127)
    assert encoded.arrays["conv.bias/scale"].shape == (1,)  # 1-d: one scale, not one per value


def test_int8_all_zero_tensor_and_zero_channel() -> None:
    zeros = np.zeros((3, 4), np.float32)
    part = zeros.copy()
    part[1] = [1, -2, 3, 0.5]
    for per_channel in (False, True):
        codec = Int8Quantization(per_channel=per_channel)
        with np.errstate(all="raise"):  # any division by zero would raise here
            decoded = codec.decode(codec.encode({"z": zeros, "p": part}))
        assert np.array_equal(decoded["z"], zeros)
        assert np.all(np.isfinite(decoded["p"])) and np.array_equal(decoded["p"][0], zeros[0])


def test_int8_rejects_nan() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        Int8Quantization().encode({"x": np.array([1.0, np.nan], np.float32)})


def test_int8_is_four_times_smaller_exactly() -> None:
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32)
    raw = NoCompression().encode({"x": x}).nbytes
    int8 = Int8Quantization().encode({"x": x}).nbytes
    assert raw == 40_000 + 8  # float32 values + one shape dim
    assert int8 == 10_000 + 4 + 8  # int8 values + one float32 scale + one shape dim
    assert raw / int8 == pytest.approx(3.996, abs=1e-3)
    per_channel = Int8Quantization(per_channel=True).encode({"w": x.reshape(100, 100)}).nbytes
    assert per_channel == 10_000 + 100 * 4 + 2 * 8


# --- top-k ------------------------------------------------------------------------------------


def test_topk_keeps_exactly_k_largest_magnitudes() -> None:
    x = np.random.default_rng(2).permutation(np.arange(1, 101, dtype=np.float32))
    x[::2] *= -1  # distinct magnitudes 1..100, mixed signs
    codec = TopK(fraction=0.07)  # 0.07 * 100 is 7.000000000000001 in binary: still k = 7
    encoded = codec.encode({"x": x.reshape(10, 10)})
    decoded = codec.decode(encoded)["x"].reshape(-1)
    assert np.count_nonzero(decoded) == 7
    assert sorted(np.abs(decoded[decoded != 0]).tolist()) == list(range(94, 101))
    assert np.array_equal(decoded[decoded != 0], x[decoded != 0])
    assert encoded.arrays["x/indices"].dtype == np.int32
    assert encoded.nbytes == 7 * (4 + 4) + 2 * 8


def test_topk_count() -> None:
    assert topk_count(0.1, 10_000) == 1000
    assert topk_count(0.1, 5) == 1  # ceil(0.5)
    assert topk_count(1e-9, 50) == 1  # never zero
    assert topk_count(1.0, 3) == 3


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_topk_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(CompressionConfigError, match=r"^compression\.fraction: .*$"):
        TopK(fraction=fraction)


# --- chain and byte accounting ----------------------------------------------------------------


def test_chain_topk_then_int8() -> None:
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    codec = Chain(TopK(0.1), Int8Quantization())
    encoded = codec.encode({"x": x})
    assert {k: a.dtype for k, a in encoded.arrays.items()} == {
        "first/x/indices": np.int32,
        "second/x/values/q": np.int8,
        "second/x/values/scale": np.float32,
    }
    # int32 indices + int8 values + one scale + x's shape + the kept values' shape.
    assert encoded.nbytes == 100 * 4 + 100 + 4 + 8 + 8
    decoded = codec.decode(encoded)["x"]
    topk = TopK(0.1).decode(TopK(0.1).encode({"x": x}))["x"]
    assert np.count_nonzero(decoded) <= 100 and np.array_equal(decoded != 0, topk != 0)
    scale = encoded.arrays["second/x/values/scale"][0]
    assert np.max(np.abs(decoded - topk)) <= scale / 2 * (1 + 1e-5)


@pytest.mark.parametrize(
    "codec",
    [
        NoCompression(),
        Int8Quantization(),
        Int8Quantization(True),
        TopK(0.3),
        Chain(TopK(0.3), Int8Quantization()),
    ],
)
def test_nbytes_is_payload_plus_header_and_keys_round_trip(codec) -> None:
    update = _update()
    encoded = codec.encode(update)
    assert encoded.nbytes == _payload_plus_header(encoded)
    decoded = codec.decode(encoded)
    assert list(decoded) == list(update)
    assert all(decoded[k].shape == update[k].shape for k in update)


def test_no_compression_is_lossless() -> None:
    update = _update()
    decoded = NoCompression().decode(NoCompression().encode(update))
    assert all(np.array_equal(decoded[k], update[k]) for k in update)


# --- error feedback ---------------------------------------------------------------------------


def test_error_feedback_loses_nothing_over_two_rounds() -> None:
    u = {"w": np.array([[4.0, -1.0, 0.5], [3.0, -2.0, 0.25]], np.float32)}
    codec = TopK(fraction=2 / 6)
    first, residual = compress_with_feedback(codec, u, None)
    second, residual = compress_with_feedback(codec, u, residual)
    d1, d2 = codec.decode(first)["w"], codec.decode(second)["w"]
    assert d1.tolist() == [[4.0, 0, 0], [3.0, 0, 0]]
    # Round 2 compresses u + [0, -1, .5, 0, -2, .25] = [4, -2, 1, 3, -4, .5]: keeps 4 and -4.
    assert d2.tolist() == [[4.0, 0, 0], [0, -4.0, 0]]
    assert np.array_equal(d1 + d2 + residual["w"], 2 * u["w"])


def test_error_feedback_with_unbiased_codec_leaves_only_rounding() -> None:
    u = _update()
    _, residual = compress_with_feedback(NoCompression(), u, None)
    assert all(not np.any(r) for r in residual.values())


def test_residual_store_grows_only_with_participants() -> None:
    like = _update()
    model_bytes = sum(a.nbytes for a in like.values())
    store = ResidualStore()
    zeros = store.get(999_999, like)  # asking allocates nothing in the store
    assert len(store) == 0 and store.nbytes == 0
    assert all(not np.any(z) and z.dtype == np.float32 for z in zeros.values())
    codec = TopK(0.1)
    for client_id in (5, 7, 5):
        _, residual = compress_with_feedback(codec, like, store.get(client_id, like))
        store.put(client_id, residual)
    assert len(store) == 2 and 5 in store and 999_999 not in store
    assert store.nbytes == 2 * model_bytes


def test_residual_store_checkpoint_round_trip() -> None:
    store = ResidualStore()
    store.put(3, _update(1))
    store.put(42, _update(2))
    buffer = io.BytesIO()
    np.savez(buffer, **store.state())
    buffer.seek(0)
    with np.load(buffer) as saved:
        restored = ResidualStore.from_state(dict(saved))
    assert len(restored) == 2
    for client_id in (3, 42):
        a, b = store.get(client_id, {}), restored.get(client_id, {})
        assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
