"""Who of a round's sampled phones is sent the model, and in which mode: the admission gates.

Every sampled phone goes through four gates before anything is sent, each a pure function of
the config, the seed and the simulated clock, so a rerun or a resumed run decides exactly the
same (:class:`fedsim.fleet.device_simulation.DeviceSimulation` runs them in this order):

1. **online** -- the ``availability`` model (:mod:`fedsim.fleet.availability`) says whether the
   phone is online, idle and charging at the simulated hour (Bonawitz et al., "Towards
   Federated Learning at Scale", SysML 2019: phones train only then). Otherwise it is dropped
   as ``offline``.
2. **memory** (:func:`memory_gate`) -- the budget policy (:class:`fedsim.fleet.budget.MemoryBudget`)
   checks the training step's estimated memory (:func:`fedsim.fleet.memory.estimate_train_memory`,
   shapes only) against the tier's RAM: ``strict`` drops a phone that does not fit as ``oom``;
   ``adapt`` halves its batch and falls back to cheaper fine-tuning modes. The chosen mode and
   batch travel to the phone in its message.
3. **teacher** (:func:`teacher_gate`) -- with ``distill.where=client`` a phone distills only if
   the teacher's inference (:func:`fedsim.fleet.memory.estimate_inference_memory`) fits in its
   RAM and the teacher's download and FLOPs over its shard still let it meet the deadline;
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
from dataclasses import dataclass

from fedsim.fleet.budget import MemoryBudget, TrainPlan
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
        """``mode@batch`` (``+kd`` when distilling), as the round record counts trained phones."""
        assert self.plan is not None
        return f"{self.plan.mode}@{self.plan.batch_size}" + ("+kd" if self.distill else "")


def ram_bytes(profile: DeviceProfile) -> int:
    """The tier's RAM for training, in bytes."""
    return int(profile.ram_mb * MIB)


def memory_gate(
    budget: MemoryBudget, estimate: Callable[[str, int], int], profile: DeviceProfile, mode: str,
    batch_size: int,
) -> TrainPlan | None:
    """The mode and batch the budget policy lets this tier train; ``None``: none fits (``oom``).

    ``estimate`` is ``(mode name, batch) -> bytes`` of one training step.
    """
    return budget.plan(estimate, ram_bytes(profile), mode, batch_size)


def misses_deadline(cost: ClientCost, deadline_s: float | None) -> bool:
    """Download and compute alone pass the deadline, before any upload."""
    return deadline_s is not None and cost.download_s + cost.compute_s > deadline_s


def teacher_gate(
    teacher_memory_bytes: int, ram: int, with_teacher: Callable[[], ClientCost],
    deadline_s: float | None,
) -> tuple[bool, str | None]:
    """Whether a phone can afford the teacher; if not, why (``memory`` / ``deadline``).

    Parameters
    ----------
    teacher_memory_bytes : int
        The teacher's no-grad forward at the phone's batch size.
    ram : int
        The phone's RAM for training, bytes.
    with_teacher : callable
        The phone's predicted clock when it also downloads and runs the teacher (only
        computed when its memory fits).
    deadline_s : float or None
        The round's deadline.
    """
    if teacher_memory_bytes > ram:
        return False, "memory"
    if misses_deadline(with_teacher(), deadline_s):
        return False, "deadline"
    return True, None
