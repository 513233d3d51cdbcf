"""Whether a client-round fits in a phone's memory budget, and what to train if it does not.

The phone's budget is its tier's RAM for training (``DeviceProfile.ram_mb``); the estimate is
the peak of the whole client-round (:mod:`fedsim.fleet.round_memory`), a pure function of
shapes. A plan is a mode, a batch and a *chunk*: the most samples any pass over the whole
shard may run at once (frozen features, calibration, teacher logits, gradient chunks). The
chunk is the phone's own affair -- it changes memory and speed, not what is learned (but for
BatchNorm statistics of gradient chunks) -- so under either policy a mode and batch whose
passes do not fit at :data:`clients.finetune.PASS_CHUNK` samples get the largest halved chunk
that fits, never below the batch (:func:`fit_chunk`). Two policies (``budget.policy``):

- ``strict``: train the requested mode and batch if the round fits at some chunk, else do not
  train (the server records the phone as dropped with reason ``oom``).
- ``adapt``: halve the batch until it fits, but not below ``min_batch_size``; then fall back to
  cheaper fine-tuning modes, in ``fallback`` order, each again with the batch-halving. The
  floor exists because BatchNorm's batch statistics become unreliable below about 8 samples
  per batch (Wu & He, "Group Normalization", ECCV 2018, Fig. 1). The cheaper modes are
  TinyTL's (Cai et al., "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
  Learning", NeurIPS 2020): bias-only and head-only training keep far fewer activations.

Memory is checked before anything is sent, so this runs on the server, on mode *names*: the
plan it returns travels to the phone in its message, which maps the name back to the mode
(:data:`clients.finetune.MODES`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from clients.finetune import MODES, PASS_CHUNK, mode_class
from fedsim.errors import ConfigError

POLICIES = ("strict", "adapt")


@dataclass(frozen=True)
class TrainPlan:
    """What a phone trains: the mode, the batch size, the estimated peak bytes of its round,
    and the most samples a pass over its whole shard may run at once."""

    mode: str
    batch_size: int
    memory_bytes: int
    chunk: int = PASS_CHUNK


def halved_batches(batch_size: int, min_batch_size: int) -> Iterator[int]:
    """``batch_size, batch_size // 2, ...`` down to ``min_batch_size``.

    The requested batch is always tried, even below the floor: the user asked for it.
    """
    yield batch_size
    b = batch_size // 2
    while b >= min_batch_size:
        yield b
        b //= 2


def fit_chunk(
    need: Callable[[int], int], budget_bytes: int, chunk: int, floor: int
) -> tuple[int, int] | None:
    """The largest of ``chunk, chunk // 2, ...`` (not below ``floor``) whose ``need`` fits.

    Returns ``(chunk, bytes)``, or ``None``: no chunk fits. Every halving is tried even when
    one saves nothing (a shard smaller than two chunks runs both as one pass): at most
    ``log2(chunk / floor)`` estimates, each cached per pass size.
    """
    for c in halved_batches(chunk, floor):
        bytes_ = int(need(c))
        if bytes_ <= budget_bytes:
            return c, bytes_
    return None


def fallback_modes(mode: str, fallback: Sequence[str]) -> list[str]:
    """The modes ``adapt`` tries, in order: ``mode``, then the ones after it in ``fallback``.

    ``fallback`` lists modes from most to least expensive; a mode not in it (e.g. ``qat``) is
    followed by the whole list, since fedsim cannot tell where it would rank.
    """
    rest = fallback[fallback.index(mode) + 1:] if mode in fallback else fallback
    return [mode, *(m for m in rest if m != mode)]


class MemoryBudget:
    """The ``budget`` group: how a phone whose training step does not fit is handled.

    Parameters
    ----------
    policy : str
        ``"strict"`` (drop) or ``"adapt"`` (smaller batch, then cheaper modes).
    min_batch_size : int
        ``adapt`` halves the batch down to this floor, no further.
    fallback : sequence of str
        Fine-tuning modes from most to least expensive, as ``adapt`` falls through them.
    """

    def __init__(
        self,
        policy: str = "strict",
        min_batch_size: int = 8,
        fallback: Sequence[str] = ("full", "bias", "head"),
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(
                f"budget.policy: must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        if not min_batch_size >= 1:
            raise ConfigError(f"budget.min_batch_size: must be >= 1, got {min_batch_size}")
        self.fallback = tuple(str(m) for m in fallback)  # Hydra hands over a ListConfig
        unknown = [m for m in self.fallback if m not in MODES]
        if unknown or not self.fallback:
            raise ConfigError(
                f"budget.fallback: unknown or no modes {unknown} (choose from {', '.join(MODES)})"
            )
        self.policy = policy
        self.min_batch_size = int(min_batch_size)

    def plan(
        self, estimate: Callable[[str, int, int], int], budget_bytes: int, mode: str,
        batch_size: int, chunk: int = PASS_CHUNK,
    ) -> TrainPlan | None:
        """The first ``(mode, batch)`` whose round fits ``budget_bytes`` at some chunk (the
        largest that fits, :func:`fit_chunk`); ``None``: none fits.

        Parameters
        ----------
        estimate : callable
            ``(mode, batch_size, chunk) -> bytes`` at the peak of the client-round.
        budget_bytes : int
            The phone's memory for training.
        mode, batch_size : str, int
            What the run asks for.
        chunk : int
            The largest pass over the shard a phone runs.
        """
        mode_class(mode)  # an unknown name: a one-line ConfigError on finetune.mode
        if self.policy == "strict":
            candidates = [(mode, batch_size)]
        else:
            candidates = (
                (m, b)
                for m in fallback_modes(mode, self.fallback)
                for b in halved_batches(batch_size, self.min_batch_size)
            )
        for m, b in candidates:
            fit = fit_chunk(lambda c, m=m, b=b: estimate(m, b, c), budget_bytes, chunk, b)
            if fit is not None:
                return TrainPlan(mode=m, batch_size=b, memory_bytes=fit[1], chunk=fit[0])
        return None

    def __repr__(self) -> str:
        return (
            f"MemoryBudget(policy={self.policy!r}, min_batch_size={self.min_batch_size}, "
            f"fallback={self.fallback})"
        )
