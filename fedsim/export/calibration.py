"""Which images int8 post-training quantization calibrates on.

Static int8 quantization fixes each activation's scale and zero point from the ranges the
float model produces on a few hundred representative inputs ([1]_ section 3, [2]_ section 3.1).
The server holds such inputs only if the run held a proxy split out of every phone's shard
(``pretrain=proxy`` or a distillation setting): then the calibration images are (a seeded draw
from) that split, data the server already had. Without one, they are a seeded draw from the
*training pool* (the train split the phones' shards were cut from): in a deployment that stands
for a few hundred images the server collects for calibration, and the report says so. The test
split is never used, so the accuracy measured on it stays a held-out number.

References
----------
.. [1] Jacob et al., "Quantization and Training of Neural Networks for Efficient
   Integer-Arithmetic-Only Inference", CVPR 2018. https://arxiv.org/abs/1712.05877
.. [2] Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A
   whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PROXY, POOL = "proxy split", "training pool"
DEFAULT_SAMPLES = 500
DEFAULT_SEED = 0


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """The calibration images and where they came from, as the report states it.

    Parameters
    ----------
    x : np.ndarray
        ``(N, C, H, W)`` float32 images, normalised as the test split.
    source : str
        ``"proxy split"`` or ``"training pool"``.
    available : int
        Size of the source the ``N`` images were drawn from.
    seed : int
        Seed of the draw (the order is ascending train ids either way).
    """

    x: np.ndarray
    source: str
    available: int
    seed: int

    def describe(self) -> dict[str, Any]:
        """The report's ``calibration`` entry."""
        return {
            "source": self.source, "samples": len(self.x), "of": self.available,
            "seed": self.seed,
        }


def seeded_draw(ids: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """``samples`` of ``ids`` drawn without replacement by ``seed``, ascending; all if fewer.

    Examples
    --------
    >>> seeded_draw(np.arange(10), 20, seed=0).tolist() == list(range(10))
    True
    """
    if samples >= len(ids):
        return np.sort(ids)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=samples, replace=False))


def calibration_set(
    train_x: np.ndarray, proxy_ids: np.ndarray, samples: int = DEFAULT_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> CalibrationSet:
    """Up to ``samples`` calibration images: the proxy split if there is one, else the pool.

    Parameters
    ----------
    train_x : np.ndarray
        The run's train split, ``(N, C, H, W)``.
    proxy_ids : np.ndarray
        Train ids of the server's proxy split; empty when the run had none.
    samples, seed : int
        How many images to draw, and the seed of the draw.
    """
    if samples < 1:
        raise ValueError(f"calibration samples must be >= 1, got {samples}")
    if len(proxy_ids):
        source, ids = PROXY, np.asarray(proxy_ids)
    else:
        source, ids = POOL, np.arange(len(train_x))
    drawn = seeded_draw(ids, samples, seed)
    return CalibrationSet(train_x[drawn], source, len(ids), seed)
