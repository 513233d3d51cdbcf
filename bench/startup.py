"""Start-up of a fedsim run: process start to the first round dispatched, and to its end.

Runs the ``short`` workload of ``bench/workload.py`` (the run itself does not matter here)
``--reps`` times, alternating two ways of getting a Ray:

- ``local``: the run starts its own Ray (the default);
- ``cluster``: the run joins a Ray that is already up (``simulation.backend.address``), here a
  one-node cluster on loopback that this script starts with ``ray start --head`` and stops.

Nothing samples memory, so nothing slows what is measured. The first round is dispatched
``wall_s`` (its record's own round time) before its record lands in ``metrics.jsonl``.

    python bench/startup.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.workload import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


def one_run(extra: list[str], out: Path) -> tuple[float, float, float]:
    """(start-up, end of round 1, end to end) of one run, in seconds from process start."""
    cmd = [sys.executable, "run_sim.py", *WORKLOADS["short"].fedsim_overrides, *extra,
           f"hydra.run.dir={out}"]
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics, landed = out / "metrics.jsonl", None
    while proc.poll() is None:
        if landed is None and metrics.exists() and metrics.stat().st_size:
            landed = time.time()
        time.sleep(0.01)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.read()[-2000:] if proc.stderr else "run failed")
    first = json.loads(metrics.read_text().splitlines()[0])
    return landed - first["wall_s"] - launched, landed - launched, time.time() - launched


def start_cluster(temp_dir: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        check=True, capture_output=True, timeout=120,
    )
    return f"127.0.0.1:{port}"


def stop_cluster(temp_dir: str) -> None:
    """Stop exactly this cluster (``ray stop`` would stop every Ray on the machine)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGTERM)
        except (OSError, ProcessLookupError):
            continue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cluster_dir = tempfile.mkdtemp(prefix="fedsim-bench-cluster-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the cluster
    address = start_cluster(cluster_dir)
    results: dict[str, list[tuple[float, float, float]]] = {"local": [], "cluster": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.reps):
                for way, extra in (("local", []),
                                   ("cluster", [f"simulation.backend.address={address}"])):
                    results[way].append(one_run(extra, Path(tmp) / f"{way}-{rep}"))
                    print(f"rep {rep + 1} {way}: " + ", ".join(
                        f"{v:.2f}" for v in results[way][-1]), file=sys.stderr)
    finally:
        stop_cluster(cluster_dir)
    print(f"short workload, {args.reps} alternating repetitions, medians (s from process start)")
    print("| Ray | first round dispatched | first round ended | process exit |")
    print("|---|---:|---:|---:|")
    for way, runs in results.items():
        cells = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"| {way} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
