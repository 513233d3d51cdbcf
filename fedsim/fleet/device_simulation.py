"""The fleet as the server simulates it: the thin stateful shell around admission and settlement.

Before a round's messages go out, :meth:`DeviceSimulation.instructions` (a
:class:`~fedsim.strategy.virtual_clients.VirtualClients` hook) runs each sampled phone through
the admission gates (:mod:`fedsim.fleet.admission`: online, memory budget, teacher, predicted
deadline) and tells the phone its fine-tuning mode and batch, or keeps it from being sent.
After the replies, :meth:`DeviceSimulation.settle` hands them to the pure settlement
(:mod:`fedsim.fleet.settlement`: the simulated clock, stragglers, over-selection) and advances
the simulated time.

What the shell holds is state only: the simulated time, the current round's admissions, and
caches of the shape-only cost models -- the memory of a whole client-round
(:class:`fedsim.fleet.round_memory.ClientRoundMemory`, traced once per pass size) and FLOPs
(:func:`fedsim.fleet.flops.train_cost`) -- which are pure functions of their arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Message
from torch import nn

from clients.finetune import PASS_CHUNK, FineTuneMode, Full, mode_named
from fedsim import keys
from fedsim.fleet.admission import Admission, memory_gate, misses_deadline, ram_bytes, teacher_gate
from fedsim.fleet.budget import MemoryBudget, TrainPlan
from fedsim.fleet.clock import ClientCost, client_round_cost
from fedsim.fleet.fleet import Fleet
from fedsim.fleet.flops import count_flops, train_cost
from fedsim.fleet.round_memory import ClientRoundMemory
from fedsim.fleet.settlement import DeviceRound, settle

# Handling a phone's message (loading the model, encoding the upload) costs about as much host
# time as training this many samples for one epoch (the default student on digits, one thread).
HANDLING_SAMPLES = 4


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
    finetune : FineTuneMode
        The run's fine-tuning mode (a tier's profile may name another; its ``cache_features``
        holds for every mode).
    model : nn.Module
        The student, for shape-only memory and FLOP counts (never trained here).
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    batch_size, epochs : int
        The run's local recipe (a strategy's per-round override is read from its message).
    samples : callable
        A phone's shard size (``Partition.size``): its training FLOPs scale with it.
    model_bytes : int
        Bytes every phone downloads each round: the tensors that may differ from what it holds
        (:mod:`fedsim.fleet.exchange`, :func:`fedsim.fleet.model_size.model_bytes`).
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
    algorithm_copies : int
        fp32 copies of the trained parameters a client algorithm holds while the phone trains
        (SCAFFOLD: ``c`` and ``c_i``; :attr:`clients.algorithms.base.LocalAlgorithm.memory_copies`);
        its extra download is in ``model_bytes``.
    """

    def __init__(
        self, fleet: Fleet, availability: object, budget: MemoryBudget, finetune: FineTuneMode,
        model: nn.Module, input_shape: tuple[int, int, int], batch_size: int, epochs: int,
        samples: Callable[[int], int], model_bytes: int, seed: int, deadline_s: float | None,
        start_hour: float, needed: int | None, one_pass: bool = False,
        teacher: nn.Module | None = None, teacher_bytes: int = 0, algorithm_copies: int = 0,
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
        self._memory = ClientRoundMemory(model, input_shape, teacher, held_copies=algorithm_copies)
        self._flops: dict[tuple[str, int], tuple[int, int]] = {}
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
            mode = self.fleet.tiers[name].finetune or self.finetune.name
            self.memory_bytes(mode, self.batch_size)
            self.flops(mode, epochs, 1)

    def mode(self, name: str) -> FineTuneMode:
        """The mode ``name`` stands for in this run (with the run's ``cache_features``)."""
        return mode_named(name, cache_features=self.finetune.cache_features)

    def memory_bytes(
        self, mode: str, batch_size: int, chunk: int = PASS_CHUNK, samples: int | None = None,
        distill: bool = False,
    ) -> int:
        """Estimated peak bytes of a client-round (:mod:`fedsim.fleet.round_memory`).

        ``samples`` is the phone's shard size; ``None`` stands for a shard at least as large
        as every pass. The round is a full-batch gradient when the run uploads one.
        """
        samples = max(batch_size, chunk) if samples is None else samples
        return self._memory.estimate(
            self.mode(mode), batch_size, chunk, samples, gradient=self.one_pass, distill=distill
        ).peak

    def flops(self, mode: str, epochs: int, samples: int) -> tuple[int, int]:
        """``(fp32, int8)`` FLOPs of a client-round; linear in ``samples``, cached per sample."""
        key = (mode, epochs)
        if key not in self._flops:
            cost = train_cost(
                self.model, self.input_shape, self.mode(mode), samples=1, epochs=epochs
            )
            self._flops[key] = (cost.fp32_flops, cost.int8_flops)
        fp32, int8 = self._flops[key]
        return fp32 * samples, int8 * samples

    def teacher_flops(self, samples: int) -> int:
        """fp32 FLOPs of the teacher's logits over ``samples`` (one forward each, once a round)."""
        assert self.teacher is not None
        if self._teacher_flops is None:
            self._teacher_flops = count_flops(self.teacher, self.input_shape, Full(), 1).forward
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

    # --- before sending: admissions ------------------------------------------------------------

    def admit(self, server_round: int, client_id: int, epochs: int, batch_size: int) -> Admission:
        """The gates of :mod:`fedsim.fleet.admission`, in order, for one sampled phone."""
        tier = self.fleet.tier_of(client_id)
        profile = self.fleet.profile_of(client_id)
        online = self.availability.is_online(
            client_id, profile, self.sim_time_s, server_round, self.seed
        )
        if not online:
            return Admission(client_id, tier, None, "offline")
        mode = profile.finetune or self.finetune.name
        samples = self.samples(client_id)
        plan = memory_gate(
            self.budget, lambda m, b, c: self.memory_bytes(m, b, c, samples), profile, mode,
            batch_size,
        )
        if plan is None:
            return Admission(client_id, tier, None, "oom")
        distill, no_kd = False, None
        if self.teacher is not None:
            plan, distill, no_kd = teacher_gate(
                plan,
                lambda c: self.memory_bytes(plan.mode, plan.batch_size, c, samples, distill=True),
                ram_bytes(profile),
                lambda: self.cost(client_id, plan, epochs, bytes_up=0, distill=True),
                self.deadline_s,
            )
        predicted = self.cost(client_id, plan, epochs, bytes_up=0, distill=distill)
        drop = "straggler" if misses_deadline(predicted, self.deadline_s) else None
        return Admission(client_id, tier, plan, drop, distill, no_kd)

    def instructions(
        self, server_round: int, client_id: int, cohort: np.ndarray, config: ConfigRecord
    ) -> dict | None:
        """:class:`VirtualClients` hook: the phone's mode, batch and chunk; ``None``: not sent."""
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
            keys.CHUNK: admission.plan.chunk,
            keys.CACHE_FEATURES: self.finetune.cache_features,
        }
        if self.teacher is not None:
            told[keys.DISTILL] = int(admission.distill)
        return told

    def expected_work(self, client_id: int, config: ConfigRecord) -> float:
        """FLOPs the host runs for this phone this round, plus a fixed share for handling its
        message: what bundles are balanced by (:mod:`fedsim.server.bundles`).

        The round's admission says the mode (the tier and the budget chose it) and whether it
        distills; ``config`` the epochs.
        """
        admission = self._admissions.get(client_id)
        plan = admission.plan if admission is not None else None
        mode = plan.mode if plan is not None else self.finetune.name
        epochs = 1 if self.one_pass else int(config.get(keys.LOCAL_EPOCHS, self.epochs))
        samples = self.samples(client_id)
        work = sum(self.flops(mode, epochs, samples))
        if admission is not None and admission.distill:
            work += self.teacher_flops(samples)
        # The handling share at the same mode's cost per sample-epoch (the same cached trace).
        return float(work + sum(self.flops(mode, epochs, HANDLING_SAMPLES)) / epochs)

    # --- after the replies: the clock --------------------------------------------------------

    def settle(
        self, server_round: int, sent: list[Message], completed: list[Message]
    ) -> DeviceRound:
        """Settle the replies (:func:`fedsim.fleet.settlement.settle`), then advance the time."""
        admissions = self._admissions if self._round == server_round else {}
        settled = settle(
            admissions, sent, completed, self.cost, self.epochs, self.deadline_s, self.needed
        )
        self.sim_time_s += settled.round_s
        return settled
