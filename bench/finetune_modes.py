"""Time of one client-round in each fine-tuning mode at fedsim's default student.

MobileNetV2 width 0.5 with BatchNorm (``conf/model/mobilenet_v2.yaml``) on digits shapes
(1x8x8, 10 classes): one phone with 40 real digits images trains 5 epochs of SGD (batch 8,
lr 0.05, momentum 0.9) through ``clients.training.train_in_mode`` in each mode, from the same
initial weights, 3 repetitions, median wall time on 1 thread. Printed as a markdown table with
the estimated training-step memory (``fedsim.fleet.memory.estimate_train_memory``) and the
client-round FLOPs (``fedsim.fleet.flops.train_cost``).

Usage: ``python -m bench.finetune_modes``. ``int8_head``'s time includes the post-training
quantisation of the backbone (FX prepare / calibrate / convert), which the client repeats every
round since the global backbone changes.
"""

from __future__ import annotations

import statistics
import time

SAMPLES = 40
EPOCHS = 5
BATCH_SIZE = 8
LR = 0.05
MOMENTUM = 0.9
REPS = 3
SEED = 0


def main() -> None:
    import torch

    from clients.finetune import MODES
    from clients.training import LocalRecipe, train_in_mode
    from fedsim.data.shards import ShardSource
    from fedsim.fleet.flops import train_cost
    from fedsim.fleet.memory import estimate_train_memory
    from fedsim.models.factory import ModelBuilder

    torch.set_num_threads(1)
    shards = ShardSource.from_config(
        {"_target_": "fedsim.data.datasets.Digits"},
        {"_target_": "fedsim.data.partition.iid.IidPartitioner"}, 1437 // SAMPLES, SEED,
    )
    splits, _ = shards.load()
    x, y = shards(0)
    x, y = torch.from_numpy(x[:SAMPLES]), torch.from_numpy(y[:SAMPLES])
    builder = ModelBuilder.from_config(
        {"_target_": "fedsim.models.mobilenet_v2.mobilenet_v2", "width_mult": 0.5, "dropout": 0.2},
        {"_target_": "torch.nn.BatchNorm2d", "_partial_": True}, splits.input_shape, 10,
    )
    torch.manual_seed(SEED)
    model = builder()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    shape = tuple(splits.input_shape)
    recipe = LocalRecipe(EPOCHS, BATCH_SIZE, LR, MOMENTUM)

    rows = []
    for name, mode_class in MODES.items():
        mode = mode_class()
        times = []
        for rep in range(REPS):
            model.load_state_dict(initial)
            start = time.perf_counter()
            train_in_mode(model, x, y, recipe, torch.Generator().manual_seed(rep), mode)
            times.append(time.perf_counter() - start)
        memory = estimate_train_memory(model, shape, BATCH_SIZE, mode).total
        cost = train_cost(model, shape, mode, len(x), EPOCHS)
        rows.append((name, statistics.median(times), memory, cost))

    full = rows[0][1]
    print(f"MobileNetV2 w0.5 (BN), digits {shape}, {len(x)} samples, {EPOCHS} epochs, "
          f"batch {BATCH_SIZE}, median of {REPS}, 1 thread\n")
    print("| mode | median s / client-round | ratio to full | est. memory (MB) "
          "| fp32 train GFLOP | int8 train GFLOP |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, seconds, memory, cost in rows:
        print(f"| {mode} | {seconds:.3f} | {seconds / full:.2f} | {memory / 2**20:.2f} "
              f"| {cost.fp32_flops / 1e9:.3f} | {cost.int8_flops / 1e9:.3f} |")


if __name__ == "__main__":
    main()
