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
    failures: dict[str, int] = field(default_factory=dict)  # reason -> count (errors, timeouts)
    dropped: dict[str, int] = field(default_factory=dict)  # device-side drops: offline, oom, ...
    aggregated: bool = True  # False: fewer than simulation.min_completed phones completed
    recovered: int = 0  # replies Ray re-ran after their actor died mid-message
    num_examples: int = 0  # training samples behind this round's aggregate
    epsilon: float | None = None  # privacy spent after this round (None without DP)
    clipping_norm: float | None = None  # DP clipping norm applied this round (None without DP)
    clients: list[int] = field(default_factory=list)  # virtual clients whose update was used
    secagg: dict | None = None  # secure-aggregation cost model's figures (None: no secagg)
    sim_time_s: float = 0.0  # simulated time at the end of this round (fedsim.fleet.clock)
    round_sim_s: float = 0.0  # simulated duration of this round
    energy_j: float = 0.0  # simulated energy of the phones that trained this round
    tiers: dict = field(default_factory=dict)  # per device tier: sampled, trained by mode, dropped
    wall_s: float = 0.0  # this round, host wall clock
    elapsed_wall_s: float = 0.0  # since the first round started
    client_wall_s: float = 0.0  # sum of the completed clients' local training time
    eval_wall_s: float = 0.0  # this round's central evaluation (0: not evaluated)
    bytes_up: int = 0  # encoded upload payloads of the completed clients
    bytes_down: int = 0  # the model as sent to every sampled client (uncompressed float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False)


class RunLog:
    """Appends round records to ``metrics.jsonl`` and keeps them for the summary.

    ``restored`` are the rounds of a resumed run: the file is rewritten to hold exactly those
    (a killed run may have appended rounds after its last checkpoint; they are redone).
    """

    def __init__(self, path: Path, restored: list[RoundRecord] | None = None) -> None:
        self.path = path
        self.records: list[RoundRecord] = list(restored or [])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w") as fh:
            fh.writelines(record.to_json() + "\n" for record in self.records)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def append(self, record: RoundRecord) -> None:
        with self.path.open("a") as fh:
            fh.write(record.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(record)


def read_records(path: Path) -> list[dict]:
    """The round records of a ``metrics.jsonl`` as dicts."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
