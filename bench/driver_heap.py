"""Where does the server (driver) process's memory go in a long run? tracemalloc vs RSS.

Runs the soak workload of ``bench/soak.py`` (digits, MobileNetV2 w0.35, 20 phones, 4 a round,
10 % injected client errors, central evaluation every 100 rounds) inside this process, starts
``tracemalloc`` at round ``--start`` (after the first evaluation, so warm-up is not traced),
snapshots at ``--a`` and ``--b``, and prints the driver's RSS and traced Python heap at both, the
allocation sites that grew most between them, and the split of the RSS growth into Python heap
and native memory (Ray's core worker, torch, the allocator). tracemalloc slows the server by
about a third; the clients run in Ray actors and are not traced.

    python bench/driver_heap.py [--start 105] [--a 120] [--b 400] 2>/dev/null | tail -15
"""

from __future__ import annotations

import argparse
import gc
import os
import runpy
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """This process's resident set size, MiB (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rounds_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def watch(run_dir: Path, start: int, a: int, b: int) -> None:
    """Trace from ``start``; at ``b`` print the diff against ``a`` and end the process."""
    while rounds_done(run_dir) < start:
        time.sleep(0.5)
    tracemalloc.start(12)
    while rounds_done(run_dir) < a:
        time.sleep(0.5)
    gc.collect()
    first, rss_a, heap_a = tracemalloc.take_snapshot(), rss_mib(), tracemalloc.get_traced_memory()[0]
    while rounds_done(run_dir) < b:
        time.sleep(0.5)
    gc.collect()
    last, rss_b, heap_b = tracemalloc.take_snapshot(), rss_mib(), tracemalloc.get_traced_memory()[0]
    per_100 = 100 / (b - a)
    rss_growth, heap_growth = rss_b - rss_a, (heap_b - heap_a) / 2**20
    print(f"rounds {a}..{b}: driver RSS {rss_a:.1f} -> {rss_b:.1f} MiB "
          f"({rss_growth * per_100:+.2f} MiB / 100 rounds)")
    print(f"traced Python heap {heap_a / 2**20:.2f} -> {heap_b / 2**20:.2f} MiB "
          f"({heap_growth * per_100:+.2f} MiB / 100 rounds); "
          f"native (RSS minus Python heap) {(rss_growth - heap_growth) * per_100:+.2f} MiB / 100 rounds")
    print("\nlargest growing Python allocation sites:")
    for stat in last.compare_to(first, "lineno")[:12]:
        print(f"  {stat}")
    sys.stdout.flush()
    os._exit(0)  # the run itself is not the point; Ray's processes go with the session


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", type=int, default=105, help="start tracing at this round")
    parser.add_argument("--a", type=int, default=120, help="first snapshot")
    parser.add_argument("--b", type=int, default=400, help="second snapshot")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="fedsim-driver-heap-"))
    threading.Thread(target=watch, args=(run_dir, args.start, args.a, args.b), daemon=True).start()
    os.chdir(ROOT)
    sys.argv = [
        "run_sim.py", f"simulation.rounds={args.b + 10}", "simulation.population=20",
        "simulation.clients_per_round=4", "simulation.local.epochs=1",
        "simulation.eval_every=100", "model.width_mult=0.35", "faults.client_error_rate=0.1",
        "audit=none", "progress=lines", f"hydra.run.dir={run_dir}",
    ]
    runpy.run_path(str(ROOT / "run_sim.py"), run_name="__main__")


if __name__ == "__main__":
    main()
