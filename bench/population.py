"""Does population size cost memory or time? population=1,000 vs 1,000,000, interleaved.

Both runs draw each phone's shard from the pool (``partition.samples_per_client``), since a
million disjoint shards cannot be cut from 1,437 digits. Reports the peak PSS of the whole
process tree and the steady-state wall per round (rounds after the first, which includes
actor start-up).

    python bench/population.py [--reps 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.process_tree import run_measured

ROOT = Path(__file__).resolve().parents[1]


def one_run(population: int, rounds: int, out_dir: Path) -> tuple[int, float]:
    cmd = [
        sys.executable, "run_sim.py", f"simulation.population={population}",
        f"simulation.rounds={rounds}", "partition.samples_per_client=14", "progress=lines",
        f"hydra.run.dir={out_dir}",
    ]
    m = run_measured(cmd, ROOT)
    if m.returncode != 0:
        raise SystemExit(m.stderr[-2000:])
    records = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steady = statistics.median(r["wall_s"] for r in records[1:])
    return m.peak_pss_bytes, steady


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    results: dict[int, list[tuple[int, float]]] = {1_000: [], 1_000_000: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for population in results:  # interleaved, so drift hits both alike
                out = Path(tmp) / f"p{population}-r{rep}"
                results[population].append(one_run(population, args.rounds, out))
    print("| population | peak PSS of process tree (MiB, median) | steady wall per round (s, median) |")
    print("|---:|---:|---:|")
    medians = {}
    for population, runs in results.items():
        mem = statistics.median(r[0] for r in runs) / 2**20
        wall = statistics.median(r[1] for r in runs)
        medians[population] = (mem, wall)
        print(f"| {population:,} | {mem:.0f} | {wall:.2f} |")
    (m_small, w_small), (m_big, w_big) = medians[1_000], medians[1_000_000]
    print(f"\nratio 1M/1k: memory {m_big / m_small:.3f}, wall per round {w_big / w_small:.3f}")


if __name__ == "__main__":
    main()
