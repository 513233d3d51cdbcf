"""``metrics.jsonl``: one JSON object per finished round, flushed and fsynced as it is written.

The server appends a :class:`RoundRecord` the moment a round ends, so a crash, a kill or a bad
strategy in round ``r`` never loses rounds ``1 .. r-1``. Fields ending in ``wall_s`` are host
wall-clock times; every other field is a deterministic function of the config and seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round.

    ``accuracy`` and ``loss`` are the global model's test-split figures after this round's
    aggregation, ``None`` on rounds that were not evaluated. ``train_loss`` is the
    sample-weighted mean of the completed clients' local training losses.
    """

    round: int
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    sampled: int
    completed: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count
    num_examples: int = 0  # training samples behind this round's aggregate
    epsilon: float | None = None  # privacy spent after this round (None without DP)
    wall_s: float = 0.0  # this round, host wall clock
    elapsed_wall_s: float = 0.0  # since the first round started
    client_wall_s: float = 0.0  # sum of the completed clients' local training time
    bytes_up: int = 0  # encoded upload payloads of the completed clients
    bytes_down: int = 0  # the model as sent to every sampled client (uncompressed float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


class RunLog:
    """Appends round records to ``metrics.jsonl`` and keeps them for the summary."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[RoundRecord] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def append(self, record: RoundRecord) -> None:
        with self.path.open("a") as fh:
            fh.write(record.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(record)


def read_records(path: Path) -> list[dict]:
    """The round records of a ``metrics.jsonl`` as dicts."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
