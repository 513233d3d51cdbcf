"""The server's round loop, run inside the Flower ServerApp.

Per round: the (wrapped) strategy configures the cohort's messages, the grid delivers them to
the execution slots, replies are tallied (completed, failed by reason, timed out), the strategy
aggregates, the global model is evaluated when due, and a :class:`RoundRecord` is written before
the next round starts. This is Flower's ``Strategy.start`` loop with fedsim's bookkeeping, kept
here so that the loop, not the strategy, owns outputs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.compression.wire import record_nbytes
from fedsim.privacy.mechanisms import PrivacyPlan
from fedsim.reporting.run_log import RoundRecord
from fedsim.server.evaluation import Evaluation

log = logging.getLogger("fedsim")


@dataclass(frozen=True)
class RoundPlan:
    """How many rounds to run, how often to evaluate, how long to wait for replies."""

    rounds: int
    eval_every: int
    round_timeout_s: float
    slots: int

    def evaluates(self, server_round: int) -> bool:
        """Evaluate every ``eval_every`` rounds and always at the last round."""
        return server_round % self.eval_every == 0 or server_round == self.rounds


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


def failure_reason(reply: Message) -> str:
    """A short, stable reason for an error reply."""
    return _REASONS.get(reply.error.code, "unknown_error")


def tally(sent: list[Message], replies: list[Message]) -> Tally:
    """Split replies into completed and failed; messages with no reply timed out."""
    completed = [r for r in replies if not r.has_error()]
    failures = Counter(failure_reason(r) for r in replies if r.has_error())
    missing = len(sent) - len(replies)
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


def traffic(sent: list[Message], completed: list[Message]) -> tuple[int, int]:
    """Bytes up (completed clients' encoded payloads) and down (the model to each message)."""
    up = sum(int(r.content[keys.METRICS].get(keys.PAYLOAD_BYTES, 0)) for r in completed)
    down = sum(record_nbytes(next(iter(m.content.array_records.values()))) for m in sent)
    return up, down


def wait_for_slots(grid: Grid, slots: int, timeout_s: float = 300.0) -> None:
    """Block until the simulation engine has registered every execution slot."""
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < slots:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(grid.get_node_ids()))}/{slots} slots came up")
        time.sleep(0.02)


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
) -> str:
    """Run up to ``plan.rounds`` rounds from ``arrays``; return why the run ended."""
    wait_for_slots(grid, plan.slots)
    first_start = time.perf_counter()
    for server_round in range(1, plan.rounds + 1):
        if budget_exhausted(privacy, server_round):
            log.warning("stopping before round %d: it would exceed the privacy budget", server_round)
            return "privacy_budget"
        start = time.perf_counter()
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = (
            list(grid.send_and_receive(messages, timeout=plan.round_timeout_s))
            if messages
            else []
        )
        outcome = tally(messages, replies)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        if privacy.accountant is not None:
            privacy.accountant.step()
        last = server_round == plan.rounds or budget_exhausted(privacy, server_round + 1)
        evaluation = evaluate(arrays) if plan.evaluates(server_round) or last else None
        train_loss, num_examples, client_s = weighted_train_loss(outcome.completed)
        bytes_up, bytes_down = traffic(messages, outcome.completed)
        now = time.perf_counter()
        record = RoundRecord(
            round=server_round,
            accuracy=evaluation.accuracy if evaluation else None,
            loss=evaluation.loss if evaluation else None,
            train_loss=train_loss,
            sampled=len(messages),
            completed=len(outcome.completed),
            failed=outcome.failed,
            failures=outcome.failures,
            num_examples=num_examples,
            epsilon=privacy.accountant.epsilon() if privacy.accountant else None,
            wall_s=now - start,
            elapsed_wall_s=now - first_start,
            client_wall_s=client_s,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
        )
        on_round(record, arrays)
    return "completed"

