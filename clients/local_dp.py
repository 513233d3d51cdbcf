"""The device's half of local DP: clip the update, add Gaussian noise, then send.

The server's half is :mod:`fedsim.strategy.local_dp`; see :mod:`fedsim.privacy.local_accounting`
for the guarantee and its accounting. The update is the change (trained minus received) of
exactly the tensors the phone uploads (its fine-tuning mode's
:meth:`~clients.finetune.base.FineTuneMode.uploaded_names`), so every number that leaves the
phone is clipped and noised, and no noise is spent on tensors it does not send: a frozen
backbone came from the server and goes back nowhere. The reply's sample count becomes 1: a
true count would leak the shard size, and equal weights are what the per-report guarantee
assumes of the aggregate anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedsim.privacy.clipping import clip_to_norm

# Distinguishes the local DP noise stream from every other consumer of the run seed.
_LOCAL_DP_STREAM = 0x1D9


def local_dp_rng(seed: int, server_round: int, client_id: int) -> np.random.Generator:
    """The noise of one client's report is a function of (run seed, round, client)."""
    return np.random.default_rng([seed, server_round, client_id, _LOCAL_DP_STREAM])


def privatize(
    received: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    clipping_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], bool]:
    """``received + clip(trained - received) + N(0, (z C)^2 I)``, and whether it was clipped.

    Parameters
    ----------
    received, trained : Mapping[str, np.ndarray]
        The exchanged state before and after local training (same keys, float arrays).
    clipping_norm : float
        ``C``: L2 bound on the whole update.
    noise_multiplier : float
        ``z``: per-coordinate noise std is ``z * C``.
    rng : np.random.Generator
        Source of the noise.
    """
    names = list(received)
    update = [np.asarray(trained[n], np.float64) - np.asarray(received[n], np.float64) for n in names]
    clipped, was_clipped = clip_to_norm(update, clipping_norm)
    std = noise_multiplier * clipping_norm
    released = {}
    for name, delta in zip(names, clipped, strict=True):
        noise = rng.normal(0.0, std, size=delta.shape) if std > 0 else 0.0
        base = np.asarray(received[name])
        released[name] = (base.astype(np.float64) + delta + noise).astype(base.dtype)
    return released, was_clipped
