"""Run any Flower strategy over a virtual phone population.

Flower addresses messages to supernodes; in fedsim supernodes are only *execution slots* and
the phones are virtual client ids chosen by a seeded :class:`~fedsim.server.sampler.CohortSampler`.
:class:`VirtualClients` wraps whatever ``flwr.serverapp.strategy.Strategy`` the user chose:

- ``configure_train`` lets the inner strategy build its message (its arrays and its train
  config, e.g. FedProx's ``proximal-mu``) against a view of the grid that shows one node per
  cohort member, then re-issues that content once per virtual client, with the client id in
  the message's config, spread round-robin over the real slots. The inner strategy's own node
  choice is discarded: nodes are slots, not phones. A strategy that addresses its messages to
  phones itself (``fedsim.keys.CLIENT_ID`` in the config: the legacy adapter,
  :mod:`fedsim.strategy.legacy`, one ``FitIns`` per phone) has each phone sent its own; the
  view's ``cohort`` tells it who they are.
- ``aggregate_train`` hands the inner strategy the replies sorted by virtual client id, so the
  floating-point summation order, and hence the result, does not depend on which slot
  finished first.
- Evaluation is central (on the server's held-out split), so no evaluate messages are sent.

Like Flower's DP wrappers, this composes around any strategy instead of subclassing one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys
from fedsim.strategy.wrapper import innermost


class _CohortView(Grid):
    """A read-only grid that shows the inner strategy one placeholder node per cohort member.

    Stock strategies sample ``max(fraction * nodes, min_train_nodes)`` nodes and wait until
    ``min_available_nodes`` are connected; showing at least that many placeholders means they
    never block on a small slot count, and their choice among placeholders is irrelevant.
    """

    def __init__(self, grid: Grid, count: int, cohort: Iterable[int] = ()) -> None:
        self._grid = grid
        self._ids = list(range(1, count + 1))
        self.cohort = [int(c) for c in cohort]  # the sampler's virtual phones this round

    def get_node_ids(self) -> Iterable[int]:
        return list(self._ids)

    # The rest of Grid's abstract interface: reads delegate, transport is fedsim's alone.
    def set_run(self, run):  # type: ignore[override]
        raise RuntimeError("a strategy must not change the run")

    @property
    def run(self):  # type: ignore[override]
        return self._grid.run

    def create_message(self, *args, **kwargs):  # type: ignore[override]
        return self._grid.create_message(*args, **kwargs)

    def push_messages(self, messages):  # type: ignore[override]
        raise RuntimeError("fedsim sends messages itself; a strategy must not push them")

    def pull_messages(self, message_ids):  # type: ignore[override]
        raise RuntimeError("fedsim receives messages itself; a strategy must not pull them")

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[override]
        raise RuntimeError("fedsim sends messages itself; a strategy must not send them")


def phone_config(message: Message) -> ConfigRecord:
    """The config record of a train message that names its virtual client."""
    for record in message.content.config_records.values():
        if keys.CLIENT_ID in record:
            return record
    raise KeyError(f"message carries no {keys.CLIENT_ID!r}")


def client_id_of(message: Message) -> int:
    """The virtual client id a train message is addressed to."""
    return int(phone_config(message)[keys.CLIENT_ID])


def addressed_to(message: Message) -> int | None:
    """The virtual client id a strategy addressed ``message`` to, or None (any phone)."""
    for record in message.content.config_records.values():
        if keys.CLIENT_ID in record:
            return int(record[keys.CLIENT_ID])
    return None


def _readdress(template: Message, client_id: int, node_id: int, extra: dict) -> Message:
    """A copy of ``template``'s content for one virtual client, sent to one slot."""
    content = RecordDict()
    for name, record in template.content.items():
        if isinstance(record, ConfigRecord):
            record = ConfigRecord({**record, **extra, keys.CLIENT_ID: client_id})
        content[name] = record  # arrays are shared read-only, as Flower's own strategies do
    return Message(content, dst_node_id=node_id, message_type=template.metadata.message_type)


class Cohorts(Protocol):
    """Chooses each round's virtual clients: the run's :class:`~fedsim.server.sampler.CohortSampler`
    (the server side owns it; the stack only asks it)."""

    def cohort(self, server_round: int) -> np.ndarray: ...


# (round, client id, cohort, the strategy's train config) -> extra config entries, or None.
Instructions = Callable[[int, int, np.ndarray, ConfigRecord], "dict | None"]


class VirtualClients(Strategy):
    """Wrap ``strategy`` so that each round trains the sampler's cohort of virtual clients.

    Parameters
    ----------
    strategy : Strategy
        Any Flower Message-API strategy (stock or the user's own).
    sampler : Cohorts
        Chooses each round's virtual clients.
    instructions : sequence of callables, optional
        Each ``(round, client id, cohort, config) -> dict | None`` adds config entries to one
        client's message (``config`` is the strategy's train config for the round). ``None``
        means the phone is not sent anything this round (the device simulation dropped it:
        offline, out of memory, hopelessly late). fedsim's device simulation and fault
        injection use it, in that order.
    """

    def __init__(
        self, strategy: Strategy, sampler: Cohorts,
        instructions: Sequence[Instructions] = (),
    ) -> None:
        self.strategy = strategy
        self.sampler = sampler
        self.instructions = tuple(instructions)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        cohort = self.sampler.cohort(server_round)
        if len(cohort) == 0:
            return []
        user = innermost(self.strategy)
        placeholders = max(
            len(cohort),
            int(getattr(user, "min_available_nodes", 0)),
            int(getattr(user, "min_train_nodes", 0)),
        )
        # Strategies write into the config they are given (FedAvg sets "server-round"): hand
        # them a copy so the caller's record stays as it was.
        view = _CohortView(grid, placeholders, cohort)
        templates = list(
            self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), view)
        )
        if not templates:
            return []
        own = {addressed_to(t): t for t in templates}
        if None not in own:  # every message names its phone: the others are sent nothing
            cohort = np.array([cid for cid in cohort if int(cid) in own], dtype=cohort.dtype)
        chosen = [(int(cid), own.get(int(cid), templates[0])) for cid in cohort]
        extras = [
            (cid, template, self._extra(server_round, cid, cohort, _config(template)))
            for cid, template in chosen
        ]
        slots = sorted(grid.get_node_ids())
        sent = [(cid, template, extra) for cid, template, extra in extras if extra is not None]
        return [
            _readdress(template, cid, slots[i % len(slots)], extra)
            for i, (cid, template, extra) in enumerate(sent)
        ]

    def _extra(
        self, server_round: int, client_id: int, cohort: np.ndarray, config: ConfigRecord
    ) -> dict | None:
        extra: dict = {keys.SERVER_ROUND: server_round}
        for source in self.instructions:
            more = source(server_round, client_id, cohort, config)
            if more is None:
                return None
            extra.update(more)
        return extra

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ordered = sorted(replies, key=_reply_order)
        return self.strategy.aggregate_train(server_round, ordered)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        self.strategy.summary()


def _config(message: Message) -> ConfigRecord:
    """The strategy's train config in ``message`` (empty if it sent none)."""
    return next(iter(message.content.config_records.values()), ConfigRecord())


def _reply_order(reply: Message) -> tuple[int, int]:
    """Successful replies by the virtual client id they report; errors after them."""
    if reply.has_error():
        return (1, 0)
    metrics = next(iter(reply.content.metric_records.values()), None)
    if metrics is None or keys.CLIENT_ID not in metrics:
        return (1, 0)
    return (0, int(metrics[keys.CLIENT_ID]))

