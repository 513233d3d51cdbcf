"""The fleet as the server simulates it: who can train this round, how, and how long it took.

Every sampled phone goes through three gates, each a pure function of the config, the seed and
the simulated clock, so a rerun or a resumed run decides exactly the same:

1. **online** -- the ``availability`` model says whether the phone is online, idle and charging
   at the simulated hour (Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019:
   phones train only then). Otherwise it is dropped as ``offline``.
2. **memory** -- the budget policy (:class:`fedsim.fleet.budget.MemoryBudget`) checks the training
   step's estimated memory (:func:`fedsim.fleet.memory.estimate_train_memory`, shapes only) against
   the tier's RAM: ``strict`` drops a phone that does not fit as ``oom``; ``adapt`` halves its
   batch and falls back to cheaper fine-tuning modes. The chosen mode and batch travel to the
   phone in its message.
3. **teacher** -- with ``distill.where=client`` a phone distills only if the teacher's inference
   (:func:`fedsim.fleet.memory.estimate_inference_memory`) fits in its RAM and the teacher's
   download and FLOPs over its shard still let it meet the deadline; otherwise it trains with
   plain cross-entropy and its tier's ``no_kd`` says why (``memory`` or ``deadline``).
4. **deadline** -- the simulated clock (:mod:`fedsim.fleet.clock`) turns the phone's download, its
   training FLOPs for the chosen mode (:func:`fedsim.fleet.flops.train_cost`) on its tier's
   throughput (times its own speed), and its upload of the bytes it actually sent into seconds.
   A phone that finishes after ``simulation.deadline_s`` is dropped as ``straggler``. One whose
   download and compute alone already pass the deadline is not sent at all: the server would
   discard its update anyway, so fedsim skips the host compute (its error-feedback residual, if
   any, is then not updated, unlike on a real phone that trained in vain).

With over-selection (``simulation.overcommit``, as in FedScale, Lai et al. ICML 2022) the
server samples more phones than it needs and keeps the first ``clients_per_round`` to finish;
the others are dropped as ``overcommit``. A round lasts until the deadline when someone missed
it, otherwise until its slowest kept phone finished.

:class:`DeviceSimulation` is the thin stateful shell: it holds the simulated time and the
current round's admissions, and caches memory estimates and FLOP counts per (mode, batch).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Message
from torch import nn

from fedsim.fleet.budget import MemoryBudget, TrainPlan
from fedsim.fleet.flops import train_cost
from fedsim.fleet.flops import count_flops
from fedsim.fleet.memory import estimate_inference_memory, estimate_train_memory
from fedsim import keys
from fedsim.fleet.clock import ClientCost, client_round_cost, round_duration
from fedsim.compression.wire import record_nbytes
from fedsim.config import FineTune
from fedsim.fleet.fleet import Fleet

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


@dataclass(frozen=True)
class DeviceRound:
    """The device side of one finished round."""

    kept: list[Message]  # the replies the strategy aggregates
    sampled: int
    dropped: dict[str, int]  # reason -> phones
    round_s: float  # simulated duration of this round
    energy_j: float  # spent by every phone that trained (kept, late or over-selected)
    tiers: dict[str, dict] = field(default_factory=dict)  # per tier: sampled, trained, dropped
    costs: dict[int, ClientCost] = field(default_factory=dict)  # kept phones' clocks


def keep_first_finishers(
    finished: list[tuple[float, int]], needed: int | None
) -> tuple[set[int], set[int]]:
    """Over-selection: the ``needed`` phones that finished first (ties by id), and the rest.

    ``needed=None`` (no over-selection) keeps everyone.
    """
    ordered = sorted(finished)
    cut = len(ordered) if needed is None else needed
    return {cid for _, cid in ordered[:cut]}, {cid for _, cid in ordered[cut:]}


class DeviceSimulation:
    """Admits the cohort's phones, then settles their replies on the simulated clock.

    Parameters
    ----------
    fleet : Fleet
        Each phone's tier, profile and speed.
    availability : object
        ``is_online(client_id, profile, sim_time_s, server_round, seed) -> bool``.
    budget : MemoryBudget
        The memory-budget policy.
    finetune : FineTune
        The run's fine-tuning mode (a tier's profile may override it).
    model : nn.Module
        The student, for shape-only memory and FLOP counts (never trained here).
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    batch_size, epochs : int
        The run's local recipe (a strategy's per-round override is read from its message).
    samples : callable
        A phone's shard size (``Partition.size``): its training FLOPs scale with it.
    model_bytes : int
        Bytes of the model every phone downloads.
    seed : int
        Run seed.
    deadline_s : float or None
        Simulated seconds a phone has to finish its round.
    start_hour : float
        Local hour at simulated time 0.
    needed : int or None
        With over-selection, the phones to keep per round (``clients_per_round``); ``None``
        keeps every phone that finished in time.
    one_pass : bool
        The update is one full-batch gradient (FedSGD): one forward and backward per sample.
    teacher : nn.Module or None
        With ``distill.where=client``, the teacher each phone would download and run once over
        its shard (shape-only costs, never run here).
    teacher_bytes : int
        Bytes of the teacher's download.
    """

    def __init__(
        self, fleet: Fleet, availability: object, budget: MemoryBudget, finetune: FineTune,
        model: nn.Module, input_shape: tuple[int, int, int], batch_size: int, epochs: int,
        samples: Callable[[int], int], model_bytes: int, seed: int, deadline_s: float | None,
        start_hour: float, needed: int | None, one_pass: bool = False,
        teacher: nn.Module | None = None, teacher_bytes: int = 0,
    ) -> None:
        self.fleet = fleet
        self.availability = availability
        self.budget = budget
        self.finetune = finetune
        self.model = model
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.epochs = epochs
        self.samples = samples
        self.model_bytes = model_bytes
        self.seed = seed
        self.deadline_s = deadline_s
        self.start_hour = start_hour
        self.needed = needed
        self.one_pass = one_pass
        self.teacher = teacher
        self.teacher_bytes = teacher_bytes
        self.sim_time_s = 0.0  # at the start of the round being run
        self._round: int | None = None
        self._admissions: dict[int, Admission] = {}
        self._memory: dict[tuple[str, int], int] = {}
        self._flops: dict[tuple[str, int], tuple[int, int]] = {}
        self._teacher_memory: dict[int, int] = {}
        self._teacher_flops: int | None = None

    # --- cached shape-only cost models ----------------------------------------------------------

    def warm_up(self) -> None:
        """Fill the caches for the mode and batch each tier starts from, before round 1.

        A process's first meta-tensor trace makes torch import ``torch._dynamo`` and SymPy for
        its meta kernels (~1.2 s here); :func:`fedsim.run.simulation.run` has it done while Ray
        starts instead of in round 1.
        """
        epochs = 1 if self.one_pass else self.epochs
        for name in self.fleet.mix:
            mode = self.fleet.tiers[name].finetune or self.finetune.mode
            self.memory_bytes(mode, self.batch_size)
            self.flops(mode, epochs, 1)

    def memory_bytes(self, mode: str, batch_size: int) -> int:
        """Estimated bytes of one training step (cached: a pure function of its arguments)."""
        if (mode, batch_size) not in self._memory:
            estimate = estimate_train_memory(self.model, self.input_shape, batch_size, mode)
            self._memory[mode, batch_size] = estimate.total
        return self._memory[mode, batch_size]

    def flops(self, mode: str, epochs: int, samples: int) -> tuple[int, int]:
        """``(fp32, int8)`` FLOPs of a client-round; linear in ``samples``, cached per sample."""
        key = (mode, epochs)
        if key not in self._flops:
            cost = train_cost(
                self.model, self.input_shape, mode, samples=1, epochs=epochs,
                cache_features=self.finetune.cache_features,
            )
            self._flops[key] = (cost.fp32_flops, cost.int8_flops)
        fp32, int8 = self._flops[key]
        return fp32 * samples, int8 * samples

    def teacher_memory_bytes(self, batch_size: int) -> int:
        """Estimated bytes of the teacher's no-grad forward over ``batch_size`` samples."""
        assert self.teacher is not None
        if batch_size not in self._teacher_memory:
            self._teacher_memory[batch_size] = estimate_inference_memory(
                self.teacher, self.input_shape, batch_size
            )
        return self._teacher_memory[batch_size]

    def teacher_flops(self, samples: int) -> int:
        """fp32 FLOPs of the teacher's logits over ``samples`` (one forward each, once a round)."""
        assert self.teacher is not None
        if self._teacher_flops is None:
            self._teacher_flops = count_flops(self.teacher, self.input_shape, "full", 1).forward
        return self._teacher_flops * samples

    def cost(
        self, client_id: int, plan: TrainPlan, epochs: int, bytes_up: int, distill: bool = False
    ) -> ClientCost:
        """The simulated clock of one phone's client-round (with the teacher, if ``distill``)."""
        samples = self.samples(client_id)
        fp32, int8 = self.flops(plan.mode, 1 if self.one_pass else epochs, samples)
        download = self.model_bytes
        if distill:
            fp32 += self.teacher_flops(samples)
            download += self.teacher_bytes
        return client_round_cost(
            self.fleet.profile_of(client_id), self.fleet.speed_of(client_id), fp32, int8,
            download, bytes_up,
        )

    def distill_choice(
        self, client_id: int, plan: TrainPlan, epochs: int, ram_bytes: int
    ) -> tuple[bool, str | None]:
        """Whether the phone can afford the teacher; if not, why (``memory`` / ``deadline``)."""
        if self.teacher is None:
            return False, None
        if self.teacher_memory_bytes(plan.batch_size) > ram_bytes:
            return False, "memory"
        if self.deadline_s is not None:
            with_teacher = self.cost(client_id, plan, epochs, bytes_up=0, distill=True)
            if with_teacher.download_s + with_teacher.compute_s > self.deadline_s:
                return False, "deadline"
        return True, None

    # --- before sending: admissions ------------------------------------------------------------

    def admit(self, server_round: int, client_id: int, epochs: int, batch_size: int) -> Admission:
        """Online? Fits in memory (in which mode and batch)? Can it possibly meet the deadline?"""
        tier = self.fleet.tier_of(client_id)
        profile = self.fleet.profile_of(client_id)
        online = self.availability.is_online(
            client_id, profile, self.sim_time_s, server_round, self.seed
        )
        if not online:
            return Admission(client_id, tier, None, "offline")
        mode = profile.finetune or self.finetune.mode
        ram = int(profile.ram_mb * MIB)
        plan = self.budget.plan(self.memory_bytes, ram, mode, batch_size)
        if plan is None:
            return Admission(client_id, tier, None, "oom")
        distill, no_kd = self.distill_choice(client_id, plan, epochs, ram)
        if self.deadline_s is not None:
            before_upload = self.cost(client_id, plan, epochs, bytes_up=0, distill=distill)
            if before_upload.download_s + before_upload.compute_s > self.deadline_s:
                return Admission(client_id, tier, plan, "straggler", distill, no_kd)
        return Admission(client_id, tier, plan, None, distill, no_kd)

    def instructions(
        self, server_round: int, client_id: int, cohort: np.ndarray, config: ConfigRecord
    ) -> dict | None:
        """:class:`VirtualClients` hook: the phone's mode and batch, or ``None``: not sent."""
        if self._round != server_round:
            self._round, self._admissions = server_round, {}
        epochs = int(config.get(keys.LOCAL_EPOCHS, self.epochs))
        batch_size = int(config.get(keys.BATCH_SIZE, self.batch_size))
        admission = self.admit(server_round, client_id, epochs, batch_size)
        self._admissions[client_id] = admission
        if admission.drop is not None:
            return None
        told = {
            keys.FINETUNE_MODE: admission.plan.mode,
            keys.BATCH_SIZE: admission.plan.batch_size,
            keys.CACHE_FEATURES: self.finetune.cache_features,
        }
        if self.teacher is not None:
            told[keys.DISTILL] = int(admission.distill)
        return told

    # --- after the replies: the clock --------------------------------------------------------

    def settle(self, server_round: int, sent: list[Message], completed: list[Message]) -> DeviceRound:
        """Clock the completed replies, drop the late and the over-selected, advance the time."""
        admissions = self._admissions if self._round == server_round else {}
        dropped: Counter[str] = Counter(a.drop for a in admissions.values() if a.drop)
        epochs = {_client_id(m): int(_config(m).get(keys.LOCAL_EPOCHS, self.epochs)) for m in sent}
        energy = 0.0
        for a in admissions.values():
            if a.drop == "straggler":  # trained in vain until the deadline passed
                epochs_a = epochs.get(a.client_id, self.epochs)
                energy += self.cost(a.client_id, a.plan, epochs_a, 0, a.distill).energy_j
        costs: dict[int, ClientCost] = {}
        by_id: dict[int, Message] = {}
        for reply in completed:
            metrics = reply.content[keys.METRICS]
            cid = int(metrics[keys.CLIENT_ID])
            admission = admissions[cid]
            cost = self.cost(
                cid, admission.plan, epochs[cid], int(metrics[keys.PAYLOAD_BYTES]),
                admission.distill,
            )
            energy += cost.energy_j
            costs[cid], by_id[cid] = cost, reply
        late = {
            cid for cid, c in costs.items()
            if self.deadline_s is not None and c.total_s > self.deadline_s
        }
        dropped["straggler"] += len(late)
        on_time = [(costs[cid].total_s, cid) for cid in sorted(costs) if cid not in late]
        kept_ids, extra = keep_first_finishers(on_time, self.needed)
        dropped["overcommit"] += len(extra)
        any_late = dropped["straggler"] > 0
        round_s = round_duration([costs[cid].total_s for cid in kept_ids], self.deadline_s, any_late)
        self.sim_time_s += round_s
        kept = [reply for cid, reply in sorted(by_id.items()) if cid in kept_ids]
        return DeviceRound(
            kept=kept, sampled=len(admissions) or len(sent),
            dropped={k: v for k, v in sorted(dropped.items()) if v},
            round_s=round_s, energy_j=energy,
            tiers=tier_report(admissions, kept_ids, late, extra),
            costs={cid: costs[cid] for cid in sorted(kept_ids)},
        )


def tier_report(
    admissions: dict[int, Admission], kept: set[int], late: set[int], extra: set[int]
) -> dict[str, dict]:
    """Per tier: phones sampled, kept phones per ``mode@batch``, and drops per reason.

    Phones that were sent but whose reply never came (errors, timeouts) count as sampled only;
    the round record's ``failures`` has their reasons. In a client-distillation run, a tier
    whose phones could not afford the teacher also has ``no_kd``: reason -> phones.
    """
    report: dict[str, dict] = defaultdict(
        lambda: {"sampled": 0, "trained": Counter(), "dropped": Counter(), "no_kd": Counter()}
    )
    for cid, a in sorted(admissions.items()):
        entry = report[a.tier]
        entry["sampled"] += 1
        if a.no_kd and not a.drop:
            entry["no_kd"][a.no_kd] += 1
        if a.drop:
            entry["dropped"][a.drop] += 1
        elif cid in late:
            entry["dropped"]["straggler"] += 1
        elif cid in extra:
            entry["dropped"]["overcommit"] += 1
        elif cid in kept:
            entry["trained"][a.label] += 1
    return {
        tier: {
            "sampled": e["sampled"],
            "trained": dict(sorted(e["trained"].items())),
            "dropped": dict(sorted(e["dropped"].items())),
            **({"no_kd": dict(sorted(e["no_kd"].items()))} if e["no_kd"] else {}),
        }
        for tier, e in sorted(report.items())
    }


def _config(message: Message) -> ConfigRecord:
    return next(iter(message.content.config_records.values()))


def _client_id(message: Message) -> int:
    return int(_config(message)[keys.CLIENT_ID])


def model_bytes(arrays) -> int:  # noqa: ANN001 - an ArrayRecord
    """Bytes of the model as every phone downloads it."""
    return record_nbytes(arrays)
