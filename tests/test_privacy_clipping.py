"""Clipping, the fixed-denominator noisy mean and adaptive clipping, on hand-checkable numbers."""

import math

import numpy as np
import pytest

from fedsim.privacy import PrivacyConfigError
from fedsim.privacy.clipping import (
    adaptive_clip_update,
    adaptive_update_noise_multiplier,
    clip_to_norm,
    gaussian_noise_std,
    l2_norm,
    noisy_mean_of_clipped,
    noisy_unclipped_fraction,
)


def test_l2_norm_spans_all_tensors() -> None:
    assert l2_norm([np.array([3.0]), np.array([[4.0]])]) == 5.0
    assert l2_norm([np.zeros((2, 3), dtype=np.float32)]) == 0.0


def test_clip_by_hand() -> None:
    clipped, was_clipped = clip_to_norm([np.array([3.0, 4.0])], 1.0)
    assert was_clipped
    np.testing.assert_allclose(clipped[0], [0.6, 0.8])


def test_update_within_the_norm_is_untouched_and_inputs_never_change() -> None:
    update = [np.array([0.3, 0.4]), np.array([[0.0, 0.1]])]
    clipped, was_clipped = clip_to_norm(update, 1.0)
    assert not was_clipped
    for before, after in zip(update, clipped, strict=True):
        assert np.array_equal(before, after) and after is not before
    big = [np.array([30.0, 40.0])]
    clip_to_norm(big, 1.0)
    assert big[0].tolist() == [30.0, 40.0]


def test_every_clipped_update_is_within_the_norm() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        update = [
            rng.normal(0, rng.uniform(0.01, 10), size=s).astype(np.float32) for s in [(7, 3), (5,)]
        ]
        clipped, _ = clip_to_norm(update, 0.5)
        assert l2_norm(clipped) <= 0.5 + 1e-6
        assert all(
            c.dtype == np.float32 and c.shape == u.shape
            for c, u in zip(clipped, update, strict=True)
        )


def test_noise_std_formula() -> None:
    assert gaussian_noise_std(2.0, 0.5, 10) == pytest.approx(0.1)  # z C / m


def test_fixed_denominator_divides_by_the_expected_cohort() -> None:
    u = [np.array([0.1, -0.2]), np.array([[0.3]])]  # norm ~0.37 < C
    mean, clipped = noisy_mean_of_clipped([u, u, u], 1.0, 0.0, 10, np.random.default_rng(0))
    assert clipped == 0
    for got, layer in zip(mean, u, strict=True):
        np.testing.assert_allclose(got, 0.3 * layer)


def test_updates_are_clipped_before_summing_and_counted() -> None:
    big, small = [np.array([3.0, 4.0])], [np.array([0.0, 0.5])]
    mean, clipped = noisy_mean_of_clipped([big, small], 1.0, 0.0, 2, np.random.default_rng(0))
    assert clipped == 1
    np.testing.assert_allclose(mean[0], [(0.6 + 0.0) / 2, (0.8 + 0.5) / 2])


def test_empirical_noise_std_matches_z_c_over_m() -> None:
    rng = np.random.default_rng(1)
    updates = [[rng.normal(size=(200, 250)).astype(np.float32)] for _ in range(4)]
    exact, _ = noisy_mean_of_clipped(updates, 2.0, 0.0, 8, rng)
    noisy, _ = noisy_mean_of_clipped(updates, 2.0, 1.5, 8, np.random.default_rng(2))
    expected = 1.5 * 2.0 / 8
    assert noisy[0].dtype == np.float32
    assert np.std(noisy[0] - exact[0]) == pytest.approx(expected, rel=0.05)


def test_empty_cohort_releases_pure_noise_of_the_template_shape() -> None:
    like = [np.zeros((3, 2), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    mean, clipped = noisy_mean_of_clipped([], 1.0, 1.0, 10, np.random.default_rng(0), like=like)
    assert clipped == 0 and [m.shape for m in mean] == [(3, 2), (4,)]
    assert all(np.any(m != 0) for m in mean)
    with pytest.raises(ValueError):
        noisy_mean_of_clipped([], 1.0, 1.0, 10, np.random.default_rng(0))


def test_adaptive_clip_one_step_by_hand() -> None:
    # 70% within the norm, target 50%: shrink by exp(-0.2 * 0.2).
    assert adaptive_clip_update(1.0, 0.7, 0.5, 0.2) == pytest.approx(math.exp(-0.04))
    assert adaptive_clip_update(2.0, 0.1, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.08))
    assert adaptive_clip_update(3.0, 0.5, 0.5, 0.2) == 3.0


def test_unclipped_fraction_centres_bits_around_the_expected_cohort() -> None:
    rng = np.random.default_rng(0)
    assert noisy_unclipped_fraction(7, 10, 10, 0.0, rng) == pytest.approx(0.7)
    # 6 of 8 realised clients unclipped, m = 10: (6 - 4) / 10 + 1/2.
    assert noisy_unclipped_fraction(6, 8, 10, 0.0, rng) == pytest.approx(0.7)
    draws = [noisy_unclipped_fraction(5, 10, 10, 2.0, rng) for _ in range(4000)]
    assert np.std(draws) == pytest.approx(2.0 / 10, rel=0.05)


def test_adaptive_update_noise_multiplier_by_hand() -> None:
    # z = 1, sigma_b = 1: (1 - 1/4)^(-1/2) = 2 / sqrt(3).
    z_delta = adaptive_update_noise_multiplier(1.0, 1.0)
    assert z_delta == pytest.approx(2 / math.sqrt(3))
    assert z_delta**-2 + (2 * 1.0) ** -2 == pytest.approx(1.0)  # the pair costs exactly z
    assert adaptive_update_noise_multiplier(0.0, 1.0) == 0.0


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 0.5), (1.2, 0.5), (1.0, 0.0)])
def test_count_noise_must_leave_budget_for_the_updates(z: float, sigma_b: float) -> None:
    with pytest.raises(PrivacyConfigError, match=r"^privacy\.clipped_count_stddev: "):
        adaptive_update_noise_multiplier(z, sigma_b)
