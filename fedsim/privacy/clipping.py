"""Per-client clipping and the noisy mean of DP-FedAvg, with adaptive clipping.

Pure numpy on model updates, an update being ``list[np.ndarray]`` (one array per parameter
tensor). Implements the server step of DP-FedAvg (McMahan et al., "Learning Differentially
Private Recurrent Language Models", ICLR 2018): clip every client's whole update to L2 norm
``C``, sum, divide by the *expected* cohort size ``m``, add ``N(0, (z C / m)^2)`` per coordinate.
Every client weighs the same whatever its number of examples: the unit of privacy is the client.

Adaptive clipping follows Andrew et al., "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021: ``C`` tracks the ``gamma``-quantile of update norms through a noisy
count of unclipped updates, and the noise on the updates is raised so that the pair of releases
still costs what one release with noise multiplier ``z`` would
(:func:`adaptive_update_noise_multiplier`).

Nothing here imports ``dp_accounting`` or the server side; a client-side mod may use it.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.privacy import PrivacyConfigError

Update = list[np.ndarray]


def l2_norm(update: Update) -> float:
    """L2 norm of the whole update, all tensors flattened into one vector."""
    return math.sqrt(sum(float(np.sum(np.square(layer, dtype=np.float64))) for layer in update))


def clip_to_norm(update: Update, clipping_norm: float) -> tuple[Update, bool]:
    """Scale ``update`` by ``min(1, C / ||update||)``.

    Returns
    -------
    tuple[list[np.ndarray], bool]
        The (new) arrays, and whether they were scaled down. An update within the norm comes back
        as copies, unchanged.
    """
    if clipping_norm <= 0:
        raise PrivacyConfigError(f"privacy.clipping_norm: must be > 0, got {clipping_norm}")
    norm = l2_norm(update)
    if norm <= clipping_norm:
        return [np.array(layer, copy=True) for layer in update], False
    scale = clipping_norm / norm
    return [(layer * scale).astype(layer.dtype, copy=False) for layer in update], True


def gaussian_noise_std(
    noise_multiplier: float, clipping_norm: float, expected_cohort: float
) -> float:
    """Per-coordinate noise std on the mean: ``z * C / m``.

    The sum of clipped updates has L2 sensitivity ``C`` to adding or removing one client, so noise
    ``z * C`` on the sum gives noise multiplier ``z``; dividing by the constant ``m`` scales both.

    We divide by the *expected* cohort size ``m = qN``, never the realised one: under Poisson
    sampling the realised size reveals whether a client took part (it is one larger with them), so
    dividing by it makes the sensitivity of the mean depend on the data and breaks the argument
    above. McMahan et al. (2018) use this fixed-denominator estimator for that reason; it is
    unbiased for the mean of ``m`` clipped updates.
    """
    if expected_cohort <= 0:
        raise PrivacyConfigError(
            f"simulation.clients_per_round: expected cohort must be > 0, got {expected_cohort}"
        )
    return noise_multiplier * clipping_norm / expected_cohort


def noisy_mean_of_clipped(
    updates: list[Update],
    clipping_norm: float,
    noise_multiplier: float,
    expected_cohort: float,
    rng: np.random.Generator,
    like: Update | None = None,
) -> tuple[Update, int]:
    """The DP-FedAvg aggregate: ``(sum_i clip(u_i) + N(0, (zC)^2 I)) / m``.

    Parameters
    ----------
    updates : list[list[np.ndarray]]
        One update per client of the realised cohort, equally weighted. May be empty (Poisson
        sampling): the noise is released all the same, as the accountant assumes.
    clipping_norm : float
        ``C``.
    noise_multiplier : float
        ``z``.
    expected_cohort : float
        ``m``, the fixed denominator (see :func:`gaussian_noise_std`).
    rng : np.random.Generator
        Source of the noise.
    like : list[np.ndarray], optional
        Shapes and dtypes of the result; needed only when ``updates`` is empty.

    Returns
    -------
    tuple[list[np.ndarray], int]
        The noisy mean (dtype of the inputs; arithmetic in float64) and how many updates were
        clipped.
    """
    template = updates[0] if updates else like
    if template is None:
        raise ValueError("noisy_mean_of_clipped: an empty cohort needs `like` for the shapes")
    std = gaussian_noise_std(noise_multiplier, clipping_norm, expected_cohort)
    total = [np.zeros(layer.shape, dtype=np.float64) for layer in template]  # (same shapes)
    clipped_count = 0
    for update in updates:
        clipped, was_clipped = clip_to_norm(update, clipping_norm)
        clipped_count += was_clipped
        for acc, layer in zip(total, clipped, strict=True):
            acc += layer
    mean = []
    for acc, layer in zip(total, template, strict=True):
        noise = rng.normal(0.0, std, size=acc.shape) if std > 0 else 0.0
        mean.append((acc / expected_cohort + noise).astype(layer.dtype))
    return mean, clipped_count


# --- adaptive clipping (Andrew et al., NeurIPS 2021) ------------------------------------------


def noisy_unclipped_fraction(
    count_unclipped: int,
    cohort_size: int,
    expected_cohort: float,
    sigma_b: float,
    rng: np.random.Generator,
) -> float:
    """``b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2``, ``b_i = 1[||u_i|| <= C]``.

    The private estimate of the fraction of updates within the norm (Andrew et al. 2021). The bits
    are centred before noising because ``b_i - 1/2`` has sensitivity 1/2 to adding or removing a
    client, half that of ``b_i``; :func:`adaptive_update_noise_multiplier` relies on it. Hence
    ``cohort_size`` (the realised ``n``, needed for ``sum_i (b_i - 1/2) = count - n/2``). Fixed
    denominator ``m`` for the reason given in :func:`gaussian_noise_std`; with ``n == m`` this is
    ``(count + noise) / m``. The value may leave [0, 1]; the geometric update copes with that.
    """
    if expected_cohort <= 0:
        raise PrivacyConfigError(
            f"simulation.clients_per_round: expected cohort must be > 0, got {expected_cohort}"
        )
    noise = rng.normal(0.0, sigma_b) if sigma_b > 0 else 0.0
    return (count_unclipped - cohort_size / 2 + noise) / expected_cohort + 0.5


def adaptive_clip_update(
    clipping_norm: float, unclipped_fraction: float, target_quantile: float, lr: float
) -> float:
    """Geometric step ``C <- C * exp(-lr * (b_bar - gamma))`` of Andrew et al. (2021).

    ``unclipped_fraction`` is ``b_bar``, the noisy fraction of updates *within* the norm (from
    :func:`noisy_unclipped_fraction`), and ``gamma`` the target fraction. Too many unclipped
    (``b_bar > gamma``) shrinks ``C``; too few grows it. Geometric, so ``C`` stays positive and
    moves fast across orders of magnitude.
    """
    if not 0 <= target_quantile <= 1:
        raise PrivacyConfigError(
            f"privacy.target_quantile: must be in [0, 1], got {target_quantile}"
        )
    return clipping_norm * math.exp(-lr * (unclipped_fraction - target_quantile))


def adaptive_update_noise_multiplier(z: float, sigma_b: float) -> float:
    """Noise multiplier for the updates so that updates plus count together cost ``z``.

    Each round releases two Gaussian sums of the same clients: the clipped updates (sensitivity
    ``C``, noise multiplier ``z_delta``) and the unclipped count, whose bits are centred as
    ``b_i - 1/2`` (sensitivity 1/2, so noise ``sigma_b`` is noise multiplier ``2 sigma_b``).
    Composed, they are one Gaussian mechanism with ``z^-2 = z_delta^-2 + (2 sigma_b)^-2``
    (Andrew et al. 2021, Theorem 1; under replace-one both sensitivities double and the same
    formula results), hence

        ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)``,

    which exists only if ``2 sigma_b > z``: the count alone must not use up the budget. The paper
    suggests ``sigma_b = m / 20``. ``z == 0`` (no privacy) gives 0.
    """
    if z < 0:
        raise PrivacyConfigError(f"privacy.noise_multiplier: must be >= 0, got {z}")
    if z == 0:
        return 0.0
    if not 2 * sigma_b > z:
        raise PrivacyConfigError(
            f"privacy.clipped_count_stddev: 2 * {sigma_b} must exceed noise_multiplier {z}"
        )
    return (z**-2 - (2 * sigma_b) ** -2) ** -0.5
