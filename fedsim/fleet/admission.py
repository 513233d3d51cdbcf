"""Who of a round's sampled phones is sent the model, and in which mode: the admission gates.

Every sampled phone goes through four gates before anything is sent, each a pure function of
the config, the seed and the simulated clock, so a rerun or a resumed run decides exactly the
same (:class:`fedsim.fleet.device_simulation.DeviceSimulation` runs them in this order):

1. **online** -- the ``availability`` model (:mod:`fedsim.fleet.availability`) says whether the
   phone is online, idle and charging at the simulated hour (Bonawitz et al., "Towards
   Federated Learning at Scale", SysML 2019: phones train only then). Otherwise it is dropped
   as ``offline``.
2. **memory** (:func:`memory_gate`) -- the budget policy (:class:`fedsim.fleet.budget.MemoryBudget`)
   checks the estimated peak of the whole client-round (:mod:`fedsim.fleet.round_memory`,
   shapes only: training steps, and passes over the shard of at most ``chunk`` samples)
   against the tier's RAM: a chunk too large is halved; ``strict`` drops a phone whose mode and
   batch do not fit as ``oom``; ``adapt`` halves its batch and falls back to cheaper
   fine-tuning modes. The chosen mode, batch and chunk travel to the phone in its message.
3. **teacher** (:func:`teacher_gate`) -- with ``distill.where=client`` a phone distills only if
   its round with the teacher's pass over the shard still fits in its RAM (at a chunk halved
   if need be) and the teacher's download and FLOPs still let it meet the deadline;
   otherwise it trains with plain cross-entropy and its tier's ``no_kd`` says why (``memory``
   or ``deadline``).
4. **predicted deadline** (:func:`misses_deadline`) -- a phone whose download and compute alone
   (:mod:`fedsim.fleet.clock`) already pass ``simulation.deadline_s`` is dropped as
   ``straggler`` without being sent: the server would discard its update anyway, so fedsim
   skips the host compute (its error-feedback residual, if any, is then not updated, unlike on
   a real phone that trained in vain). Whether a sent phone made it is settled on its reply
   (:mod:`fedsim.fleet.settlement`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from clients.finetune import PASS_CHUNK
from fedsim.fleet.budget import MemoryBudget, TrainPlan, fit_chunk
from fedsim.fleet.clock import ClientCost
from fedsim.fleet.profile import DeviceProfile

MIB = 2**20  # device RAM is in MiB, like the memory estimates


@dataclass(frozen=True)
class Admission:
    """What one sampled phone does this round, decided before anything is sent."""

    client_id: int
    tier: str
    plan: TrainPlan | None  # None: dropped before training
    drop: str | None = None  # "offline" | "oom" | "straggler" (predicted), or None: sent
    distill: bool = False  # trains against the teacher's logits (distill.where=client)
    no_kd: str | None = None  # why a phone of a distilling run does not: "memory" | "deadline"

    @property
    def label(self) -> str:
        """``mode@batch`` (``+kd`` when distilling, `` chunk=c`` when its passes over the shard
        had to be smaller than ``PASS_CHUNK``), as the round record counts trained phones."""
        assert self.plan is not None
        label = f"{self.plan.mode}@{self.plan.batch_size}" + ("+kd" if self.distill else "")
        return label + (f" chunk={self.plan.chunk}" if self.plan.chunk < PASS_CHUNK else "")


def ram_bytes(profile: DeviceProfile) -> int:
    """The tier's RAM for training, in bytes."""
    return int(profile.ram_mb * MIB)


def memory_gate(
    budget: MemoryBudget, estimate: Callable[[str, int, int], int], profile: DeviceProfile,
    mode: str, batch_size: int,
) -> TrainPlan | None:
    """The mode, batch and chunk the budget policy lets this tier run; ``None``: ``oom``.

    ``estimate`` is ``(mode name, batch, chunk) -> bytes`` at the peak of the client-round.
    """
    return budget.plan(estimate, ram_bytes(profile), mode, batch_size)


def misses_deadline(cost: ClientCost, deadline_s: float | None) -> bool:
    """Download and compute alone pass the deadline, before any upload."""
    return deadline_s is not None and cost.download_s + cost.compute_s > deadline_s


def teacher_gate(
    plan: TrainPlan, need_with_teacher: Callable[[int], int], ram: int,
    with_teacher: Callable[[], ClientCost], deadline_s: float | None,
) -> tuple[TrainPlan, bool, str | None]:
    """Whether a phone can afford the teacher: the plan it runs, and if not, why.

    Parameters
    ----------
    plan : TrainPlan
        What the memory gate admitted, without the teacher.
    need_with_teacher : callable
        ``chunk -> bytes`` at the peak of the round that also runs the teacher over the shard;
        the chunk may be halved (not below the batch) for the teacher's pass to fit.
    ram : int
        The phone's RAM for training, bytes.
    with_teacher : callable
        The phone's predicted clock when it also downloads and runs the teacher (only
        computed when its memory fits).
    deadline_s : float or None
        The round's deadline.

    Returns
    -------
    tuple
        The plan (with the chunk and peak of the distilling round if it distills), whether it
        distills, and why not (``memory`` / ``deadline``) or ``None``.
    """
    fit = fit_chunk(need_with_teacher, ram, plan.chunk, plan.batch_size)
    if fit is None:
        return plan, False, "memory"
    if misses_deadline(with_teacher(), deadline_s):
        return plan, False, "deadline"
    return replace(plan, chunk=fit[0], memory_bytes=fit[1]), True, None
