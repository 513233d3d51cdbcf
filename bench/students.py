"""The student zoo side by side: size, cost on this CPU, and accuracy after one federated recipe.

For each student in ``conf/model`` (at its config's width) and, for reference, the default
teacher (``conf/teacher/resnet20.yaml``), on Fashion-MNIST shapes (1x28x28, 10 classes):

- ``parameters``, ``bytes_fp32``, ``bytes_int8``, ``flops_per_inference``
  (:func:`fedsim.fleet.model_size.model_size`);
- ``train step (ms)``: one SGD step (batch 8, full fine-tuning, momentum 0.9) on 1 thread,
  median of ``--steps`` after 3 warm-up steps;
- ``accuracy``: the final test accuracy of one fixed federated recipe through ``run_sim.py``:
  digits (8x8: a Fashion-MNIST round costs a minute on 2 cores, a digits round seconds), IID,
  100 phones, 10 per round, ``--rounds`` rounds (10), 5 local epochs at batch 8 and lr 0.05,
  FedAvg, BatchNorm, seed 0, no pre-training (``--no-runs`` skips it).

Usage: ``python -m bench.students [--rounds 10] [--steps 20] [--no-runs]``; prints a markdown
table (kept in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
INPUT = (1, 28, 28)
STUDENTS = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2", "ghostnet", "squeezenet")
RECIPE = [
    "dataset=digits", "partition=iid", "simulation.population=100",
    "simulation.clients_per_round=10", "simulation.local.epochs=5",
    "simulation.local.batch_size=8", "simulation.local.lr=0.05", "simulation.seed=0",
    "simulation.eval_every=100", "audit=none", "progress=lines",
]


def node(group: str, name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / group / f"{name}.yaml").read_text())


def build(model_node: dict) -> torch.nn.Module:
    from fedsim.models.factory import ModelBuilder

    batch_norm = {"_target_": "torch.nn.BatchNorm2d", "_partial_": True}
    return ModelBuilder.from_config(model_node, batch_norm, INPUT, 10)()


def step_ms(model: torch.nn.Module, steps: int) -> float:
    """Median wall time of one SGD step at batch 8 (1 thread)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, *INPUT), torch.randint(0, 10, (8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(steps + 3):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 3:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def federated_accuracy(student: str, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        subprocess.run(
            [sys.executable, "run_sim.py", f"model={student}", f"simulation.rounds={rounds}",
             *RECIPE, f"hydra.run.dir={run_dir}"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )
        return json.loads((Path(run_dir) / "summary.json").read_text())["final_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-runs", action="store_true", help="skip the federated runs")
    args = parser.parse_args()

    from fedsim.fleet.model_size import model_size

    torch.set_num_threads(1)
    rows = [(name, node("model", name), True) for name in STUDENTS]
    rows.append(("resnet20 (teacher)", node("teacher", "resnet20")["model"], False))
    print("| network | width | parameters | fp32 (KB) | int8 (KB) | MFLOPs / inference "
          "| train step, batch 8 (ms) | accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model_node, is_student in rows:
        model = build(model_node)
        size = model_size(model, INPUT)
        accuracy = "" if not is_student or args.no_runs else (
            f"{federated_accuracy(name, args.rounds):.4f}"
        )
        print(
            f"| {name} | {model_node.get('width_mult', 1.0)} | {size['parameters']:,} "
            f"| {size['bytes_fp32'] / 1e3:,.0f} | {size['bytes_int8'] / 1e3:,.0f} "
            f"| {size['flops_per_inference'] / 1e6:.1f} | {step_ms(model, args.steps):.1f} "
            f"| {accuracy} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
