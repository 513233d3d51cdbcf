"""The benchmark workload's local training with no FL framework: the limit on this machine.

The same cohorts (fedsim's sampler), shards, student (fedsim's builder: channels-last), local
SGD (``clients.training.train_locally``), sample-weighted FedAvg and central evaluation as the
simulators, with data and partition loaded once and nothing else in the way. Two layouts of the
workload's CPUs:

- ``--procs 1`` (default): one process, torch at all the workload's CPUs, the cohort's phones
  trained one after another: "a plain in-process loop at the same thread count";
- ``--procs N``: N worker processes with one thread each (fedsim's layout: one per client
  slot), each keeping its model and data, the cohort dealt out round-robin. Tiny convolutions
  use one thread each far better than they use two, so this is the machine's real limit.

Round timestamps go to ``$BENCH_EVENTS`` (JSON lines) for ``bench/compare.py``.

    python bench/bare_compute.py [--procs N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.workload import current, event


def setup(threads: int) -> tuple[Any, Any, Any]:
    """The shard source, dataset splits and model builder, made the way fedsim makes them."""
    import torch

    from fedsim.data.shards import ShardSource
    from fedsim.models.factory import ModelBuilder

    torch.set_num_threads(threads)
    w = current()
    cache = os.path.join(os.environ.get("FEDSIM_CACHE", "~/.cache/fedsim"), "datasets")
    shards = ShardSource.from_config(
        {"_target_": "fedsim.data.datasets.Digits", "cache_dir": cache},
        {"_target_": "fedsim.data.partition.iid.IidPartitioner",
         "samples_per_client": w.samples_per_client}, w.population, w.seed,
    )
    splits, _ = shards.load()
    builder = ModelBuilder.from_config(
        {"_target_": "fedsim.models.mobilenet_v2.mobilenet_v2", "width_mult": 0.5, "dropout": 0.2},
        {"_target_": "torch.nn.BatchNorm2d", "_partial_": True}, splits.input_shape, 10,
    )
    return shards, splits, builder


def train_clients(
    model: Any, shards: Any, state: dict, clients: list[int], server_round: int
) -> list[tuple[dict, int]]:
    """Train each of ``clients`` from ``state`` (numpy arrays); their states and sample counts.

    States travel as numpy arrays: pickling torch tensors between processes goes through
    torch's shared-memory reductions, one file descriptor per tensor, which costs more than the
    training on this workload.
    """
    import torch

    from clients.training import LocalRecipe, train_locally

    w = current()
    recipe = LocalRecipe(w.epochs, w.batch_size, w.lr, w.momentum)
    out = []
    for client in clients:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        x, y = shards(int(client))
        generator = torch.Generator().manual_seed(int(client) + 1000 * server_round)
        result = train_locally(model, torch.from_numpy(x), torch.from_numpy(y), recipe, generator)
        trained = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        out.append((trained, result.num_examples))
    return out


def worker(conn: Any) -> None:
    """A worker process (``conn``: its end of a Pipe): one thread, its own model and data;
    trains what it is sent until it is sent ``None``."""
    shards, _, builder = setup(threads=1)
    model = builder()
    conn.send("ready")
    while (job := conn.recv()) is not None:
        state, clients, server_round = job
        conn.send(train_clients(model, shards, state, clients, server_round))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()
    event("process_start")
    import multiprocessing as mp

    import numpy as np
    import torch

    from fedsim.models.evaluation import evaluate_model
    from fedsim.server.sampler import CohortSampler

    w = current()
    shards, splits, builder = setup(threads=w.total_cpus if args.procs == 1 else 1)
    pipes = []
    if args.procs > 1:  # spawned, not forked: torch's thread pool does not survive a fork
        context = mp.get_context("spawn")
        for _ in range(args.procs):
            parent, child = context.Pipe()
            context.Process(target=worker, args=(child,), daemon=True).start()
            pipes.append(parent)
        assert all(pipe.recv() == "ready" for pipe in pipes)
    torch.manual_seed(w.seed)
    model = builder()
    global_state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    sampler = CohortSampler(w.population, w.cohort, w.seed)
    event("round_end", round=0)
    for server_round in range(1, w.rounds + 1):
        cohort = [int(c) for c in sampler.cohort(server_round)]
        if pipes:
            for i, pipe in enumerate(pipes):
                pipe.send((global_state, cohort[i :: len(pipes)], server_round))
            trained = [item for pipe in pipes for item in pipe.recv()]
        else:
            trained = train_clients(model, shards, global_state, cohort, server_round)
        total = float(sum(n for _, n in trained))
        for key, value in global_state.items():
            if value.dtype.kind == "f":
                global_state[key] = sum(s[key] * np.float32(n / total) for s, n in trained)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in global_state.items()})
        accuracy = evaluate_model(model, splits.test, 500).accuracy
        event("round_end", round=server_round, accuracy=accuracy)
    for pipe in pipes:
        pipe.send(None)


if __name__ == "__main__":
    main()
