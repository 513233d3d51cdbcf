"""The student zoo side by side: size and cost on this CPU.

For each student in ``conf/model`` (at its config's width) and, for reference, the default
teacher (``conf/teacher/resnet20.yaml``), on Fashion-MNIST shapes (1x28x28, 10 classes):

- ``parameters``, ``bytes_fp32``, ``bytes_int8``, ``flops_per_inference``
  (:func:`fedsim.fleet.model_size.model_size`);
- ``train step (ms)``: one SGD step (batch 8, full fine-tuning, momentum 0.9) on 1 thread,
  median of ``--steps`` after 3 warm-up steps.

What each student reaches when trained federatedly is an experiment, not a benchmark:
``python run_sim.py -m +experiment=student_zoo`` (every student through the default run, 3
seeds). Usage: ``python -m bench.students [--steps 20]``; prints a markdown table (kept in
``docs/benchmarks.md``, "The student zoo").
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
INPUT = (1, 28, 28)
STUDENTS = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2", "ghostnet", "squeezenet")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from fedsim.fleet.model_size import model_size

    torch.set_num_threads(1)
    rows = [(name, node("model", name)) for name in STUDENTS]
    rows.append(("resnet20 (teacher)", node("teacher", "resnet20")["model"]))
    print("| network | width | parameters | fp32 (KB) | int8 (KB) | MFLOPs / inference "
          "| train step, batch 8 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, model_node in rows:
        model = build(model_node)
        size = model_size(model, INPUT)
        print(
            f"| {name} | {model_node.get('width_mult', 1.0)} | {size['parameters']:,} "
            f"| {size['bytes_fp32'] / 1e3:,.0f} | {size['bytes_int8'] / 1e3:,.0f} "
            f"| {size['flops_per_inference'] / 1e6:.1f} | {step_ms(model, args.steps):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
