"""Byzantine behaviours: seeded O(1)-memory malicious set, exact poisoning on tiny inputs."""

import math
import tracemalloc

import numpy as np
import pytest

from fedsim.attacks import AttackConfigError
from fedsim.attacks.byzantine import (
    GaussianUpdate,
    LabelFlip,
    NoAttack,
    Scale,
    SignFlip,
    malicious_clients,
)


def _delta() -> dict[str, np.ndarray]:
    return {"w": np.array([[1.0, -2.0], [0.5, 0.0]], np.float32), "b": np.array([3.0], np.float32)}


# --- malicious set ----------------------------------------------------------------------------


def test_malicious_fraction_is_binomial() -> None:
    # Binomial(100000, 0.2): mean 20000, sd sqrt(100000 * .2 * .8) = 126.5; allow 3 sd.
    members = malicious_clients(100_000, 0.2, seed=0).members(np.arange(100_000))
    assert abs(int(members.sum()) - 20_000) <= 3 * math.sqrt(100_000 * 0.2 * 0.8)


def test_malicious_set_is_deterministic_per_seed() -> None:
    ids = np.arange(2_000)
    a = malicious_clients(2_000, 0.3, seed=7)
    b = malicious_clients(2_000, 0.3, seed=7)
    c = malicious_clients(2_000, 0.3, seed=8)
    assert np.array_equal(a.members(ids), b.members(ids))
    assert not np.array_equal(a.members(ids), c.members(ids))
    # Membership of one id does not depend on what else is asked or in what order.
    assert [i in a for i in (1999, 3, 500)] == a.members(np.array([1999, 3, 500])).tolist()


def test_malicious_set_edges() -> None:
    everyone = malicious_clients(50, 1.0, seed=0)
    nobody = malicious_clients(50, 0.0, seed=0)
    assert all(i in everyone for i in range(50)) and not any(i in nobody for i in range(50))
    assert 50 not in everyone and -1 not in everyone and "3" not in everyone
    assert everyone.fraction == 1.0 and everyone.expected_count == 50


def test_malicious_set_of_a_million_allocates_nothing_per_client() -> None:
    tracemalloc.start()
    try:
        malicious = malicious_clients(1_000_000, 0.1, seed=3)
        hits = sum(i in malicious for i in range(999_000, 1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 50 <= hits <= 150  # Binomial(1000, 0.1): 100 +- 5 sd
    assert peak < 64 * 1024  # a population-sized bool array alone would be 1 MB


@pytest.mark.parametrize("fraction", [-0.1, 1.1])
def test_malicious_fraction_is_validated(fraction: float) -> None:
    with pytest.raises(AttackConfigError, match=r"^attack\.fraction: "):
        malicious_clients(10, fraction, seed=0)


# --- model poisoning --------------------------------------------------------------------------


def test_sign_flip_and_scale_exact() -> None:
    rng = np.random.default_rng(0)
    flipped = SignFlip().apply(_delta(), rng)
    assert flipped["w"].tolist() == [[-1.0, 2.0], [-0.5, 0.0]] and flipped["b"].tolist() == [-3.0]
    scaled = Scale(factor=-2.5).apply(_delta(), rng)
    assert scaled["w"].tolist() == [[-2.5, 5.0], [-1.25, 0.0]] and scaled["b"].tolist() == [-7.5]
    assert scaled["w"].dtype == np.float32


def test_scale_rejects_non_finite_factor() -> None:
    with pytest.raises(AttackConfigError, match=r"^attack\.factor: "):
        Scale(factor=float("inf"))


def test_gaussian_update_has_honest_norm_and_is_seeded() -> None:
    # ||delta||^2 = 1 + 4 + .25 + 0 + 9 = 14.25
    attack = GaussianUpdate()
    a = attack.apply(_delta(), np.random.default_rng(11))
    b = attack.apply(_delta(), np.random.default_rng(11))
    c = attack.apply(_delta(), np.random.default_rng(12))
    norm = math.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in a.values()))
    assert norm == pytest.approx(math.sqrt(14.25), rel=1e-5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["w"], c["w"])
    assert a["w"].shape == (2, 2) and a["w"].dtype == np.float32


def test_gaussian_update_of_zero_delta_is_zero() -> None:
    zero = {"w": np.zeros(4, np.float32)}
    assert not np.any(GaussianUpdate().apply(zero, np.random.default_rng(0))["w"])


def test_no_attack_is_identity_on_both_hooks() -> None:
    delta, labels = _delta(), np.array([0, 3, 9])
    out = NoAttack().apply(delta, np.random.default_rng(0))
    assert all(out[k] is delta[k] for k in delta)
    assert NoAttack().flip(labels) is labels
    assert LabelFlip(10).apply(delta, np.random.default_rng(0))["w"] is delta["w"]


# --- data poisoning ---------------------------------------------------------------------------


def test_label_flip_exact() -> None:
    flipped = LabelFlip(num_classes=10).flip(np.array([0, 3, 9], dtype=np.int64))
    assert flipped.tolist() == [9, 6, 0] and flipped.dtype == np.int64
    assert SignFlip().flip(np.array([2])).tolist() == [2]  # model attacks leave data alone


def test_label_flip_rejects_out_of_range_labels() -> None:
    with pytest.raises(AttackConfigError, match=r"^attack\.num_classes: "):
        LabelFlip(num_classes=10).flip(np.array([0, 12]))
    with pytest.raises(AttackConfigError, match=r"^attack\.num_classes: "):
        LabelFlip(num_classes=1)
