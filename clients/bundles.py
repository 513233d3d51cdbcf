"""The phone half of bundles: run every phone of a bundle in turn, reply once (issue 25).

A bundle (:mod:`fedsim.bundle_wire`) holds the instructions of several phones, the global model
once. The slot runs each phone through the same function a message of its own would go to, in
the bundle's order, so the model, the data and the buffers a process keeps are reused and each
phone's numbers are those of per-phone messages. A phone that raises fails alone: its entry in
the reply is the error Flower would have sent for it (``CLIENT_APP_RAISED_EXCEPTION``), and the
phones after it still run. A phone that kills the process (``faults.kill_actor_at_round``) takes
the bundle with it; Ray re-runs the whole bundle, and since every phone is seeded by
``(seed, round, phone)`` and its stored state is read from earlier rounds only, the re-run gives
the same replies. The server half, :mod:`fedsim.server.bundles`, unbundles the reply.

With partial sums (the bundle's layout says :data:`fedsim.keys.PARTIAL_SUMS`) each phone's
entry in the reply is its metrics only, and the slot adds the phone's model to the bundle's
:class:`~clients.partial_sums.PartialSum` instead: the reply carries one model. A phone that
failed, or overran the client time-out the layout names, is left out of the sum, as the server
would leave its reply out of the aggregate.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Iterator
from typing import TypeVar

from flwr.app import Error, Message, MetricRecord, RecordDict

from clients.partial_sums import PartialSum, Summand
from fedsim import keys
from fedsim.bundle_wire import options, pack, unpack
from fedsim.compression.codecs import NoCompression
from fedsim.compression.wire import to_records
from fedsim.updates import MEAN

T = TypeVar("T")

# Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION: what a per-phone message's exception becomes.
CLIENT_APP_RAISED_EXCEPTION = 2


def answer_bundle(message: Message, train: Callable[[Message], Message]) -> Message:
    """Run ``train`` for each phone of the bundle ``message``; one reply holding all of theirs."""
    answers = [a if isinstance(a, Error) else a.content for a in each_phone(message, train)]
    return Message(pack(answers), reply_to=message)


def each_phone(message: Message, train: Callable[[Message], T]) -> Iterator[T | Error]:
    """``train`` of each phone of the bundle ``message``, in the bundle's order; a phone that
    raises gives the error Flower would have sent for it."""
    for content in unpack(message.content):
        # The phone's own message: its records under the bundle's metadata (a reply needs one).
        phone = Message(content=content, metadata=copy.copy(message.metadata))
        try:
            answer: T | Error = train(phone)
        except Exception as err:  # noqa: BLE001 - one phone's failure is that phone's reply
            answer = Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=failure_text(err))
        yield answer


def sums_partially(message: Message) -> bool:
    """Whether the bundle ``message`` asks for one partial sum instead of each phone's upload."""
    return bool(options(message.content).get(keys.PARTIAL_SUMS, False))


def answer_summed(message: Message, train: Callable[[Message], Summand]) -> Message:
    """Run ``train`` for each phone of the bundle ``message``; one reply holding every phone's
    metrics and the example-weighted mean of their models (:func:`partial_records`)."""
    timeout_s = options(message.content).get(keys.CLIENT_TIMEOUT_S)
    total, name = PartialSum(), ""
    answers: list[RecordDict | Error] = []
    for summand in each_phone(message, train):
        if isinstance(summand, Error):
            answers.append(summand)
            continue
        metrics = summand.metrics
        answers.append(RecordDict({keys.METRICS: MetricRecord(metrics)}))
        if timeout_s is None or metrics[keys.HANDLE_S] <= float(timeout_s):
            name = summand.arrays_name
            total.add(
                summand.model, summand.weights, metrics[keys.NUM_EXAMPLES],
                int(metrics[keys.CLIENT_ID]),
            )
    return Message(pack(answers, partial=partial_records(total, name)), reply_to=message)


def partial_records(total: PartialSum, arrays_name: str) -> RecordDict | None:
    """The partial sum as a reply's records (a weights payload of kind :data:`~fedsim.updates.
    MEAN`, packed like any upload, and its weight), or ``None`` if no phone counted."""
    if total.phones == 0 or total.weight <= 0:
        return None
    payload, meta = to_records(NoCompression().encode(total.mean()), MEAN)
    weight = int(total.weight) if float(total.weight).is_integer() else total.weight
    metrics = {
        keys.NUM_EXAMPLES: weight, keys.CLIENT_ID: total.first_client, keys.PHONES: total.phones,
    }
    return RecordDict(
        {arrays_name: payload, keys.PAYLOAD: meta, keys.METRICS: MetricRecord(metrics)}
    )


def failure_text(err: Exception) -> str:
    """The error's one-line summary, then its traceback (the server logs the first line)."""
    trace = "".join(traceback.format_exception(err))
    return f"{type(err).__name__}: {err}\n{trace}"
