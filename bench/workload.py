"""The one workload every contender of ``bench/compare.py`` runs.

Digits (1,437 train / 360 test, 8x8), MobileNetV2 width 0.5 with BatchNorm (fedsim's default
student), 100 phones with disjoint IID shards (~14 images each), 10 phones a round, 8 rounds,
2 local epochs of SGD (batch 8, lr 0.05, momentum 0.9) per phone, FedAvg weighted by sample
count, central evaluation on the test split after every round, 2 CPUs with 1 per client slot.
"""

ROUNDS = 8
POPULATION = 100
COHORT = 10
EPOCHS = 2
BATCH_SIZE = 8
LR = 0.05
MOMENTUM = 0.9
SEED = 0
TOTAL_CPUS = 2
CLIENT_CPUS = 1

# The same workload as run_sim.py overrides (the membership audit is not part of it).
FEDSIM_OVERRIDES = [
    f"simulation.rounds={ROUNDS}", f"simulation.population={POPULATION}",
    f"simulation.clients_per_round={COHORT}", f"simulation.local.epochs={EPOCHS}",
    f"simulation.local.batch_size={BATCH_SIZE}", f"simulation.local.lr={LR}",
    f"simulation.local.momentum={MOMENTUM}", f"simulation.seed={SEED}",
    f"simulation.backend.num_cpus={TOTAL_CPUS}", f"simulation.backend.client_cpus={CLIENT_CPUS}",
    "audit=none", "progress=lines",
]


def event(name: str, **fields) -> None:
    """Append a timestamped mark to ``$BENCH_EVENTS`` (JSON lines), if set."""
    import json
    import os
    import time

    path = os.environ.get("BENCH_EVENTS")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": name, "t": time.time(), **fields}) + "\n")
