"""The benchmark workload's local training with no FL framework: the limit on this machine.

One process, torch at the workload's total thread count, data and partition loaded once, the
same cohorts (fedsim's sampler), shards, model, local SGD (``clients.training.train_locally``),
sample-weighted FedAvg and central evaluation as the simulators do. Round timestamps go to
``$BENCH_EVENTS`` (JSON lines) for ``bench/compare.py``.

    python bench/bare_compute.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.workload import event


def main() -> None:
    event("process_start")
    import torch

    from bench import workload as W
    from clients.training import LocalRecipe, train_locally
    from fedsim.data.shards import ShardSource
    from fedsim.models.factory import ModelBuilder
    from fedsim.server.evaluation import evaluate_model
    from fedsim.server.sampler import CohortSampler

    torch.set_num_threads(W.TOTAL_CPUS)
    shards = ShardSource.from_config(
        {"_target_": "fedsim.data.datasets.Digits"},
        {"_target_": "fedsim.data.partition.IidPartitioner"}, W.POPULATION, W.SEED,
    )
    splits, _ = shards.load()
    builder = ModelBuilder.from_config(
        {"_target_": "fedsim.models.mobilenet_v2.mobilenet_v2", "width_mult": 0.5, "dropout": 0.2},
        {"_target_": "torch.nn.BatchNorm2d", "_partial_": True}, splits.input_shape, 10,
    )
    torch.manual_seed(W.SEED)
    model = builder()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = CohortSampler(W.POPULATION, W.COHORT, W.SEED)
    recipe = LocalRecipe(W.EPOCHS, W.BATCH_SIZE, W.LR, W.MOMENTUM)
    event("round_end", round=0)
    for server_round in range(1, W.ROUNDS + 1):
        states, weights = [], []
        for client in sampler.cohort(server_round):
            model.load_state_dict(global_state)
            x, y = shards(int(client))
            generator = torch.Generator().manual_seed(int(client) + 1000 * server_round)
            result = train_locally(model, torch.from_numpy(x), torch.from_numpy(y), recipe, generator)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            weights.append(result.num_examples)
        total = float(sum(weights))
        for key, value in global_state.items():
            if value.is_floating_point():
                global_state[key] = sum(s[key] * (w / total) for s, w in zip(states, weights))
        model.load_state_dict(global_state)
        accuracy = evaluate_model(model, splits.test, 500).accuracy
        event("round_end", round=server_round, accuracy=accuracy)


if __name__ == "__main__":
    main()
