"""Flower's message pickup, with a short pause when few supernodes run (fedsim.run.engine)."""

import inspect
from queue import Queue

from flwr.server.superlink.fleet.vce import vce_api

from fedsim.run.engine import FEW_SUPERNODES, PICKUP_PAUSE_S, prompt_message_pickup


class Inboxes:
    """Just enough of Flower's LinkState: each node's pending messages, handed out one a call."""

    def __init__(self, pending: dict[int, list[str]]) -> None:
        self.pending = pending

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        taken = self.pending[node_id][:limit]
        del self.pending[node_id][:limit]
        return taken


class Stop:
    """A stop event that records each pause and is set after ``scans`` of them."""

    def __init__(self, scans: int) -> None:
        self.pauses: list[float] = []
        self.scans = scans

    def is_set(self) -> bool:
        return len(self.pauses) >= self.scans

    def wait(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_flowers_pickup_loop_is_still_the_one_replaced() -> None:
    # The engine starts its thread on this module attribute with these arguments; a Flower
    # release that renames either fails here, not by silently keeping the 0.1 s pause.
    params = list(inspect.signature(vce_api.add_messages_to_queue).parameters)
    assert params == ["state", "queue", "nodes_mapping", "f_stop"]


def test_few_supernodes_are_scanned_every_few_milliseconds_then_flowers_loop_is_back() -> None:
    original = vce_api.add_messages_to_queue
    inboxes = Inboxes({7: ["a", "b"], 3: ["c"]})
    queue: Queue = Queue()
    stop = Stop(scans=3)
    with prompt_message_pickup(2):
        assert vce_api.add_messages_to_queue is not original
        vce_api.add_messages_to_queue(inboxes, queue, {7: 0, 3: 1}, stop)
    assert vce_api.add_messages_to_queue is original
    # One message per node a scan, as Flower's loop takes them, then a PICKUP_PAUSE_S pause.
    assert [queue.get_nowait() for _ in range(queue.qsize())] == ["a", "c", "b"]
    assert stop.pauses == [PICKUP_PAUSE_S] * 3 and PICKUP_PAUSE_S < 0.1


def test_one_supernode_per_phone_keeps_flowers_loop() -> None:
    original = vce_api.add_messages_to_queue
    with prompt_message_pickup(FEW_SUPERNODES + 1):
        assert vce_api.add_messages_to_queue is original
