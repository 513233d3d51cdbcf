"""The server's round loop, run inside the Flower ServerApp.

Per round: the (wrapped) strategy configures the cohort's messages, the grid delivers them to
the execution slots, replies are tallied (completed, failed by reason, timed out), the strategy
aggregates, the global model is evaluated when due, and a :class:`RoundRecord` is written before
the next round starts. This is Flower's ``Strategy.start`` loop with fedsim's bookkeeping, kept
here so that the loop, not the strategy, owns outputs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.compression.wire import record_nbytes
from fedsim.errors import UserInputError
from fedsim.privacy.plan import PrivacyPlan
from fedsim.report.run_log import RoundRecord
from fedsim.fleet.device_simulation import DeviceSimulation
from fedsim.models.evaluation import Evaluation
from fedsim.server.bundles import exchange_bundled
from fedsim.strategy.virtual_clients import client_id_of, phone_config
from fedsim.strategy.wrapper import innermost

log = logging.getLogger("fedsim")


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds to run, how often to evaluate, how long to wait for replies."""

    rounds: int
    eval_every: int
    round_timeout_s: float
    slots: int
    first_round: int = 1  # > 1 when resuming from a checkpoint
    client_timeout_s: float | None = None
    min_completed: int = 1
    stop_at: float | None = None  # end the run once an evaluation reaches this accuracy
    bundle: bool = False  # one message per slot carrying its phones (fedsim.server.bundles)
    partial_sums: bool = False  # each slot sends its phones' mean model (clients.partial_sums)

    def evaluates(self, server_round: int) -> bool:
        """Evaluate every ``eval_every`` rounds and always at the last round."""
        return server_round % self.eval_every == 0 or server_round == self.rounds

    def bundle_options(self) -> dict:
        """What every bundle's layout tells its slot: to sum, and the time-out to sum under."""
        if not self.partial_sums:
            return {}
        timeout = {} if self.client_timeout_s is None else {
            keys.CLIENT_TIMEOUT_S: float(self.client_timeout_s)
        }
        return {keys.PARTIAL_SUMS: True, **timeout}

    def reached(self, accuracy: float | None) -> bool:
        """Whether an evaluation's ``accuracy`` ends the run (``stop_at`` set and reached)."""
        return self.stop_at is not None and accuracy is not None and accuracy >= self.stop_at


@dataclass(frozen=True)
class Tally:
    """Outcome of one round's messages."""

    completed: list[Message]
    failures: dict[str, int]

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


# Flower's ErrorCode values (flwr.common.constant) -> the reason fedsim records.
_REASONS = {
    1: "client_load_error",
    2: "client_exception",
    3: "message_unavailable",
    4: "reply_unavailable",
    5: "node_unavailable",
    8: "client_crashed",
}


# Ray failures that reach Flower as ErrorCode.UNKNOWN, told apart by the exception's name.
_RAY_REASONS = {"ActorDiedError": "actor_died", "ActorUnavailableError": "actor_restarting"}


def failure_reason(reply: Message) -> str:
    """A short, stable reason for an error reply."""
    if reply.error.code in _REASONS:
        return _REASONS[reply.error.code]
    text = reply.error.reason or ""
    return next((r for name, r in _RAY_REASONS.items() if name in text), "unknown_error")


def overran(reply: Message, client_timeout_s: float | None) -> bool:
    """Did a successful reply take longer inside its ClientApp than the client timeout?"""
    if client_timeout_s is None:
        return False
    return float(reply.content[keys.METRICS].get(keys.HANDLE_S, 0.0)) > client_timeout_s


def tally(
    sent: list[Message], replies: list[Message], client_timeout_s: float | None = None
) -> Tally:
    """Split replies into completed and failed; messages with no reply, or whose client took
    longer than ``client_timeout_s``, timed out."""
    ok = [r for r in replies if not r.has_error()]
    completed = [r for r in ok if not overran(r, client_timeout_s)]
    failures = Counter(failure_reason(r) for r in replies if r.has_error())
    missing = len(sent) - len(replies) + (len(ok) - len(completed))
    if missing > 0:
        failures["timeout"] += missing
    for reply in replies:
        if reply.has_error():
            log.warning("round client failed: %s", (reply.error.reason or "").splitlines()[0][:300])
    return Tally(completed=completed, failures=dict(sorted(failures.items())))


def weighted_train_loss(replies: list[Message]) -> tuple[float | None, int, float]:
    """Sample-weighted mean train loss, total samples and summed client time of replies."""
    total, weight, seconds = 0.0, 0, 0.0
    for reply in replies:
        metrics = reply.content[keys.METRICS]
        n = int(metrics[keys.NUM_EXAMPLES])
        total += float(metrics[keys.TRAIN_LOSS]) * n
        weight += n
        seconds += float(metrics.get(keys.COMPUTE_S, 0.0))
    return (total / weight if weight else None), weight, seconds


def completed_clients(replies: list[Message]) -> list[int]:
    """Sorted virtual client ids of the completed replies (the members of the final model)."""
    return sorted(int(r.content[keys.METRICS][keys.CLIENT_ID]) for r in replies)


def traffic(
    sent: list[Message], completed: list[Message], download_bytes: int | None = None
) -> tuple[int, int]:
    """Bytes up (completed clients' encoded payloads) and down (to each message's phone).

    ``download_bytes``: what one phone downloads (the tensors it lacks,
    :mod:`fedsim.fleet.exchange`); by default the whole model each message carries.
    """
    up = sum(int(r.content[keys.METRICS].get(keys.PAYLOAD_BYTES, 0)) for r in completed)
    if download_bytes is not None:
        return up, download_bytes * len(sent)
    down = sum(record_nbytes(next(iter(m.content.array_records.values()))) for m in sent)
    return up, down


POLL_S = 0.01  # between checks for replies (Flower's send_and_receive waits 0.1 s)


def exchange(
    grid: Grid, messages: list[Message], timeout_s: float, stop: threading.Event
) -> list[Message]:
    """Send ``messages`` and gather their replies until all are in, ``timeout_s`` passes or
    ``stop`` is set.

    ``Grid.send_and_receive`` with a shorter pause: a round's last reply is seen ~10 ms after it
    lands instead of up to 100 ms, and Ctrl-C does not wait for the round to end.
    """
    if not messages:
        return []
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout_s
    replies: list[Message] = []
    while pending and time.monotonic() < deadline and not stop.is_set():
        arrived = list(grid.pull_messages(pending))
        replies.extend(arrived)
        pending.difference_update(reply.metadata.reply_to_message_id for reply in arrived)
        if pending:
            time.sleep(POLL_S)
    return replies


def wait_for_slots(grid: Grid, slots: int, timeout_s: float = 300.0) -> None:
    """Block until the simulation engine has registered every execution slot."""
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < slots:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(grid.get_node_ids()))}/{slots} slots came up")
        time.sleep(0.02)


class StrategyError(UserInputError):
    """The strategy raised; the run stops with the rounds it finished (one-line message)."""


@contextmanager
def strategy_errors(method: str, strategy: Strategy, server_round: int) -> Iterator[None]:
    """Turn an exception inside the strategy into a one-line :class:`StrategyError`."""
    try:
        yield
    except UserInputError:
        raise
    except Exception as err:
        name = type(innermost(strategy)).__name__
        detail = str(err).splitlines()[0] if str(err) else ""
        raise StrategyError(
            f"strategy: {name}.{method} raised in round {server_round}: "
            f"{type(err).__name__}: {detail}"
        ) from err


def budget_exhausted(privacy: PrivacyPlan, next_round: int) -> bool:
    """Would running ``next_round`` take epsilon past the plan's target?"""
    if privacy.target_epsilon is None:
        return False
    return privacy.epsilon_after(next_round) > privacy.target_epsilon


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    arrays: ArrayRecord,
    plan: RoundPlan,
    evaluate: Callable[[ArrayRecord], Evaluation],
    on_round: Callable[[RoundRecord, ArrayRecord], None],
    privacy: PrivacyPlan,
    devices: DeviceSimulation,
    stop: threading.Event | None = None,
) -> str:
    """Run rounds ``plan.first_round .. plan.rounds`` from ``arrays``; return why the run ended.

    ``devices`` admitted the cohort's phones while the strategy configured the round (it is one
    of :class:`VirtualClients`' instruction sources); here it settles the replies on the
    simulated clock, and only the phones it keeps are aggregated. ``stop`` (set by Ctrl-C)
    ends the run before the next round, or discards the round in flight: it is redone,
    identically, when the run is resumed from the last checkpoint.
    """
    wait_for_slots(grid, plan.slots)
    first_start = time.perf_counter()
    stop = stop or threading.Event()
    for server_round in range(plan.first_round, plan.rounds + 1):
        if budget_exhausted(privacy, server_round):
            log.warning("stopping before round %d: it would exceed the privacy budget", server_round)
            return "privacy_budget"
        if stop.is_set():
            return "interrupted"
        start = time.perf_counter()
        with strategy_errors("configure_train", strategy, server_round):
            messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        partials: list[Message] = []  # with partial sums: what is aggregated
        if plan.bundle:  # one message per slot; back comes one reply per phone, as without
            exchanged = exchange_bundled(
                messages, sorted(grid.get_node_ids()),
                lambda sent: exchange(grid, sent, plan.round_timeout_s, stop),
                lambda m: devices.expected_work(client_id_of(m), phone_config(m)),
                plan.bundle_options(),
            )
            replies, partials = exchanged.replies, exchanged.partials
        else:
            replies = exchange(grid, messages, plan.round_timeout_s, stop)
        if stop.is_set():
            return "interrupted"
        outcome = tally(messages, replies, plan.client_timeout_s)
        settled = devices.settle(server_round, messages, outcome.completed)
        aggregate = len(settled.kept) >= plan.min_completed
        if plan.partial_sums and len(settled.kept) != len(outcome.completed):
            # Every phone that finished is in its slot's sum (fedsim.run.checks refuses the
            # deadline and over-selection, which drop phones after they trained).
            raise RuntimeError(
                f"round {server_round}: the device simulation dropped phones that are already "
                "in their slots' partial sums"
            )
        if aggregate:
            with strategy_errors("aggregate_train", strategy, server_round):
                aggregated, _ = strategy.aggregate_train(
                    server_round, partials if plan.partial_sums else settled.kept
                )
            arrays = aggregated if aggregated is not None else arrays
        if privacy.accountant is not None and (aggregate or privacy.charge_unaggregated):
            privacy.accountant.step()
        last = server_round == plan.rounds or budget_exhausted(privacy, server_round + 1)
        evaluating = time.perf_counter()
        evaluation = evaluate(arrays) if plan.evaluates(server_round) or last else None
        eval_s = time.perf_counter() - evaluating if evaluation else 0.0
        train_loss, num_examples, client_s = weighted_train_loss(settled.kept)
        bytes_up, bytes_down = traffic(messages, settled.kept, devices.model_bytes)
        now = time.perf_counter()
        record = RoundRecord(
            round=server_round,
            accuracy=evaluation.accuracy if evaluation else None,
            loss=evaluation.loss if evaluation else None,
            train_loss=train_loss,
            sampled=settled.sampled,
            completed=len(settled.kept),
            failed=outcome.failed,
            failures=outcome.failures,
            dropped=settled.dropped,
            aggregated=aggregate,
            recovered=sum(int(r.content[keys.METRICS].get(keys.RECOVERED, 0)) for r in replies
                          if not r.has_error()),
            num_examples=num_examples,
            epsilon=privacy.epsilon_spent(),  # the budget check above computed it already
            clipping_norm=privacy.clipping_norm_of(server_round),
            clients=completed_clients(settled.kept),
            sim_time_s=devices.sim_time_s,
            round_sim_s=settled.round_s,
            energy_j=settled.energy_j,
            tiers=settled.tiers,
            wall_s=now - start,
            elapsed_wall_s=now - first_start,
            client_wall_s=client_s,
            eval_wall_s=eval_s,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
        )
        on_round(record, arrays)
        if plan.reached(record.accuracy):  # rounds-to-target experiments need no more rounds
            return "target_reached"
        if aggregate and not all_finite(arrays):
            # Every phone would train from NaN and every later round would be NaN too.
            log.warning("stopping after round %d: the global model is not finite", server_round)
            return "diverged"
    return "completed"


def all_finite(arrays: ArrayRecord) -> bool:
    """Whether every number of the model is finite (a diverged run's aggregate holds NaN or inf).

    >>> from flwr.app import Array
    >>> all_finite(ArrayRecord({"w": Array(np.ones(3, np.float32))}))
    True
    >>> all_finite(ArrayRecord({"w": Array(np.array([1.0, np.nan], np.float32))}))
    False
    """
    return all(np.isfinite(array.numpy()).all() for array in arrays.values())
