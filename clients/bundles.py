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
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable

from flwr.app import Error, Message, RecordDict

from fedsim.bundle_wire import pack, unpack

# Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION: what a per-phone message's exception becomes.
CLIENT_APP_RAISED_EXCEPTION = 2


def answer_bundle(message: Message, train: Callable[[Message], Message]) -> Message:
    """Run ``train`` for each phone of the bundle ``message``; one reply holding all of theirs."""
    answers: list[RecordDict | Error] = []
    for content in unpack(message.content):
        # The phone's own message: its records under the bundle's metadata (a reply needs one).
        phone = Message(content=content, metadata=copy.copy(message.metadata))
        try:
            answers.append(train(phone).content)
        except Exception as err:  # noqa: BLE001 - one phone's failure is that phone's reply
            answers.append(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=failure_text(err)))
    return Message(pack(answers), reply_to=message)


def failure_text(err: Exception) -> str:
    """The error's one-line summary, then its traceback (the server logs the first line)."""
    trace = "".join(traceback.format_exception(err))
    return f"{type(err).__name__}: {err}\n{trace}"
