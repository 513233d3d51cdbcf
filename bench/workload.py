"""The workloads every contender of ``bench/compare.py`` runs, by name.

Both are digits (1,437 train / 360 test, 8x8) with MobileNetV2 width 0.5 and BatchNorm
(fedsim's default student), 100 phones with disjoint IID shards (~14 images each), 10 phones a
round, local SGD at batch 8, lr 0.05, momentum 0.9, FedAvg weighted by sample count, central
evaluation on the test split after every round, 2 CPUs with 1 per client slot:

- ``default``: the README's default run (``python run_sim.py audit=none``): 25 rounds of 5
  local epochs; it learns (about 0.96 test accuracy), so the three contenders can be checked
  to train the same thing. The comparison the README and ``docs/benchmarks.md`` quote.
- ``short``: 8 rounds of 2 local epochs, where start-up, the first round and shut-down weigh
  most (it does not learn yet: accuracy stays near 0.10).
- ``cross_device``: issue 25's cross-device workload: 1,000 phones with 1-2 digits each
  (disjoint IID), 100 a round, 1 local epoch, 10 rounds. A phone's work is one step, as small
  as the per-call cost of a Flower message.
- ``cross_device_10k``: 10,000 phones, 1,000 a round, 1 local epoch, 3 rounds. Digits has too
  few images for 10,000 disjoint shards, so each phone draws 2 of them (fedsim's sampled
  partition mode, ``partition.samples_per_client=2``; plain Flower draws likewise).

A contender started by ``compare.py`` reads its workload's name from ``$BENCH_WORKLOAD``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """One federated workload, as every contender runs it."""

    name: str
    rounds: int
    epochs: int
    population: int = 100
    cohort: int = 10
    batch_size: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    total_cpus: int = 2
    client_cpus: int = 1
    samples_per_client: int | None = None  # None: disjoint shards; n: each phone draws n

    @property
    def fedsim_overrides(self) -> list[str]:
        """The same workload as ``run_sim.py`` overrides (the membership audit is not part of it)."""
        return [
            f"simulation.rounds={self.rounds}", f"simulation.population={self.population}",
            f"simulation.clients_per_round={self.cohort}", f"simulation.local.epochs={self.epochs}",
            f"simulation.local.batch_size={self.batch_size}", f"simulation.local.lr={self.lr}",
            f"simulation.local.momentum={self.momentum}", f"simulation.seed={self.seed}",
            f"simulation.backend.num_cpus={self.total_cpus}",
            f"simulation.backend.client_cpus={self.client_cpus}", "audit=none", "progress=lines",
        ] + (
            [] if self.samples_per_client is None
            else [f"partition.samples_per_client={self.samples_per_client}"]
        )


WORKLOADS = {w.name: w for w in (
    Workload("default", rounds=25, epochs=5),
    Workload("short", rounds=8, epochs=2),
    Workload("cross_device", rounds=10, epochs=1, population=1000, cohort=100),
    Workload("cross_device_10k", rounds=3, epochs=1, population=10_000, cohort=1000,
             samples_per_client=2),
)}


def current() -> Workload:
    """The workload named by ``$BENCH_WORKLOAD`` (default: ``default``)."""
    return WORKLOADS[os.environ.get("BENCH_WORKLOAD", "default")]


def event(name: str, **fields) -> None:
    """Append a timestamped mark to ``$BENCH_EVENTS`` (JSON lines), if set."""
    path = os.environ.get("BENCH_EVENTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": name, "t": time.time(), **fields}) + "\n")
