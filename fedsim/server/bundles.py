"""The server half of bundles: one message per execution slot, one reply per phone (issue 25).

With ``simulation.bundle=true`` the round's per-phone messages (what the strategy stack
configured, :class:`~fedsim.strategy.virtual_clients.VirtualClients`) are not sent as they are:
they are grouped into one bundle per execution slot (:mod:`fedsim.bundle_wire`: the global
model once, each phone's config), the groups balanced by each phone's expected work so that the
slots finish together (:func:`balance`, longest processing time first, Graham 1969). Each slot
runs its phones one after another (:mod:`clients.bundles`) and replies once; the bundle reply
is turned back into one reply ``Message`` per phone before anything else sees it, so tallies,
the device simulation and every strategy see exactly what per-phone messages would give.

A bundle that fails as a whole (its slot could not run it at all) fails each of its phones with
the bundle's error. Transport only: nothing here changes what a phone computes.

With partial sums (``simulation.partial_sums``, :mod:`clients.partial_sums`) a bundle's reply
holds each phone's metrics and one model, the mean of the phones' models weighted by their
examples: the phones' replies carry the metrics only, and the partial is a reply of its own
(:attr:`Exchanged.partials`) that the round aggregates instead of them.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message

from fedsim import keys
from fedsim.bundle_wire import pack, partial_of, unpack

log = logging.getLogger("fedsim")


def balance(costs: Sequence[float], bundles: int) -> list[list[int]]:
    """Indices of ``costs`` split into at most ``bundles`` groups of near-equal total cost.

    Longest processing time first: the costliest phone goes to the least loaded group, then the
    next. Its makespan is within 4/3 of the best (Graham 1969). Each group lists its phones in
    ascending index order; empty groups are left out.

    >>> balance([5, 1, 4, 2, 3], 2)
    [[0, 1, 3], [2, 4]]
    """
    loads = [(0.0, b) for b in range(max(1, bundles))]
    groups: list[list[int]] = [[] for _ in loads]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, b = heapq.heappop(loads)
        groups[b].append(i)
        heapq.heappush(loads, (load + float(costs[i]), b))
    return [sorted(group) for group in groups if group]


def round_robin(count: int, bundles: int) -> list[list[int]]:
    """How per-phone messages spread over the slots: phone ``i`` to slot ``i mod bundles``.

    >>> round_robin(5, 2)
    [[0, 2, 4], [1, 3]]
    """
    return [list(range(b, count, bundles)) for b in range(min(bundles, count))]


def idle_fraction(groups: Sequence[Sequence[int]], seconds: Sequence[float]) -> float:
    """Share of the slots' time spent waiting for the slowest: ``1 - mean(load) / max(load)``.

    >>> idle_fraction([[0, 1], [2]], [1.0, 1.0, 1.0])
    0.25
    """
    loads = [sum(seconds[i] for i in group) for group in groups]
    if not loads or max(loads) <= 0:
        return 0.0
    return 1.0 - sum(loads) / (len(loads) * max(loads))


@dataclass(frozen=True)
class Bundles:
    """One round's bundle messages and the per-phone messages each stands for."""

    messages: list[Message]  # one per slot, what is sent
    phones: list[list[Message]]  # the per-phone messages in each bundle, in bundle order

    @classmethod
    def of(
        cls, phones: Sequence[Message], slots: Sequence[int], cost: Callable[[Message], float],
        options: Mapping[str, Any] | None = None,
    ) -> Bundles:
        """Bundle ``phones`` for ``slots`` (node ids), balanced by ``cost`` of each phone;
        ``options`` go to every slot in the bundle's layout (:func:`fedsim.bundle_wire.pack`)."""
        groups = balance([cost(m) for m in phones], len(slots))
        for phone in phones:  # never pushed itself: an id for its reply to name
            phone.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        grouped = [[phones[i] for i in group] for group in groups]
        messages = [
            Message(
                pack([m.content for m in group], options), dst_node_id=slot,
                message_type=group[0].metadata.message_type,
            )
            for group, slot in zip(grouped, slots)
        ]
        return cls(messages, grouped)

    def unbundled(self, replies: Sequence[Message]) -> Exchanged:
        """One reply per phone, for the bundles that answered (in the order they answered),
        and their partial sums."""
        # Bundle ids are set when the grid pushes the bundles.
        by_id = {m.metadata.message_id: group for m, group in zip(self.messages, self.phones)}
        groups = [by_id[bundle.metadata.reply_to_message_id] for bundle in replies]
        partials = [partial_reply(bundle, group) for bundle, group in zip(replies, groups)]
        return Exchanged(
            replies=[r for bundle, group in zip(replies, groups) for r in unbundle(bundle, group)],
            partials=[p for p in partials if p is not None],
        )


@dataclass(frozen=True)
class Exchanged:
    """A round's replies, one per phone, and with partial sums one partial a bundle."""

    replies: list[Message]
    partials: list[Message] = field(default_factory=list)


def partial_reply(reply: Message, phones: Sequence[Message]) -> Message | None:
    """The partial sum the bundle ``reply`` holds, as a reply of its own, or ``None``.

    It answers the bundle's first phone: a strategy reads a reply's content only.
    """
    if reply.has_error():
        return None
    partial = partial_of(reply.content)
    return None if partial is None else Message(partial, reply_to=phones[0])


def unbundle(reply: Message, phones: Sequence[Message]) -> list[Message]:
    """The replies to ``phones`` that the bundle ``reply`` holds (its error for each, if it
    failed as a whole)."""
    if reply.has_error():
        return [Message(reply.error, reply_to=phone) for phone in phones]
    entries = unpack(reply.content)
    if len(entries) != len(phones):
        raise RuntimeError(f"a bundle of {len(phones)} phones answered for {len(entries)}")
    return [Message(entry, reply_to=phone) for entry, phone in zip(entries, phones)]


def busy_seconds(replies: Sequence[Message]) -> list[float]:
    """Seconds each phone's reply says it kept its slot busy (0 for a failed phone)."""
    return [
        0.0 if r.has_error() else float(r.content[keys.METRICS].get(keys.HANDLE_S, 0.0))
        for r in replies
    ]


def exchange_bundled(
    messages: Sequence[Message], slots: Sequence[int],
    send: Callable[[list[Message]], list[Message]], cost: Callable[[Message], float],
    options: Mapping[str, Any] | None = None,
) -> Exchanged:
    """Send ``messages`` as one bundle per slot through ``send`` (the round's exchange) and
    return one reply per phone, as sending them one by one would (and the partial sums, if
    ``options`` asked for them).

    With the ``fedsim`` logger at INFO it logs how long the exchange took, how long each slot
    was busy and how idle the slots were, against dealing the same phones round robin.
    """
    if not messages:
        return Exchanged([])
    bundles = Bundles.of(messages, slots, cost, options)
    started = time.perf_counter()
    exchanged = bundles.unbundled(send(bundles.messages))
    replies = exchanged.replies
    if log.isEnabledFor(logging.INFO):
        busy = dict(zip((r.metadata.reply_to_message_id for r in replies), busy_seconds(replies)))
        seconds = [busy.get(m.metadata.message_id, 0.0) for m in messages]
        index = {m.metadata.message_id: i for i, m in enumerate(messages)}
        balanced = [[index[m.metadata.message_id] for m in group] for group in bundles.phones]
        log.info(
            "bundles: %.2f s to exchange; phones kept their slots busy %s s: idle %.3f of the "
            "slots' time, %.3f if dealt round robin",
            time.perf_counter() - started,
            "/".join(f"{sum(seconds[i] for i in group):.2f}" for group in balanced),
            idle_fraction(balanced, seconds),
            idle_fraction(round_robin(len(messages), len(bundles.messages)), seconds),
        )
    return exchanged
