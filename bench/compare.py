"""fedsim vs plain Flower vs bare compute on one workload, interleaved, medians and ratios.

The workload is fixed in ``bench/workload.py``. Each repetition runs the three contenders one
after another (so drift on a shared machine hits all three alike) and measures, per contender:

- ``end_to_end_s``: process start to exit;
- ``startup_s``: process start to the first round being dispatched (fedsim: when the first
  round record lands minus that round's own wall time; Flower and bare: the round-0 mark);
- ``steady_round_s``: median wall per round over rounds 2..R (round 1 includes actor start-up);
- ``peak_pss_mib``: peak summed PSS of the whole process tree (driver, Ray, every actor);
- ``overhead_per_client_call_s`` (fedsim only: it reports the clients' compute): (round wall -
  clients' compute / parallel slots) / cohort, the median over steady rounds.

    python bench/compare.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import workload as W
from bench.process_tree import descendants, pss_bytes

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("fedsim", "plain_flower", "bare_compute")


def measure(cmd: list[str], env: dict[str, str], watch: Path | None) -> dict[str, float]:
    """Run ``cmd``; sample the tree's PSS; note when ``watch`` first gets a line."""
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, first_line = 0, None
    while proc.poll() is None:
        peak = max(peak, sum(pss_bytes(p) for p in descendants(proc.pid)))
        if first_line is None and watch is not None and watch.exists() and watch.stat().st_size:
            first_line = time.time()
        time.sleep(0.1)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed:\n{err[-2000:]}")
    return {"launched": launched, "ended": time.time(), "peak": peak, "first_line": first_line}


def run_fedsim(tmp: Path) -> dict[str, float]:
    out = tmp / "fedsim"
    m = measure(
        [sys.executable, "run_sim.py", *W.FEDSIM_OVERRIDES, f"hydra.run.dir={out}"],
        dict(os.environ), out / "metrics.jsonl",
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:]
    slots = W.TOTAL_CPUS // W.CLIENT_CPUS
    overhead = statistics.median(
        (r["wall_s"] - r["client_wall_s"] / slots) / W.COHORT for r in steady
    )
    # The first record lands when round 1 ends (fsynced); it started wall_s earlier.
    return {
        "end_to_end_s": m["ended"] - m["launched"],
        "startup_s": m["first_line"] - records[0]["wall_s"] - m["launched"],
        "steady_round_s": statistics.median(r["wall_s"] for r in steady),
        "peak_pss_mib": m["peak"] / 2**20,
        "overhead_per_client_call_s": overhead,
        "final_accuracy": records[-1]["accuracy"],
    }


def run_marked(script: str, tmp: Path) -> dict[str, float]:
    events = tmp / f"{script}.jsonl"
    env = {**os.environ, "BENCH_EVENTS": str(events), "FLWR_TELEMETRY_ENABLED": "0"}
    m = measure([sys.executable, f"bench/{script}.py"], env, None)
    marks = [json.loads(x) for x in events.read_text().splitlines()]
    ends = {e["round"]: e["t"] for e in marks if e["event"] == "round_end"}
    walls = [ends[r] - ends[r - 1] for r in range(2, W.ROUNDS + 1)]
    return {
        "end_to_end_s": m["ended"] - m["launched"],
        "startup_s": ends[0] - m["launched"],
        "steady_round_s": statistics.median(walls),
        "peak_pss_mib": m["peak"] / 2**20,
        "overhead_per_client_call_s": None,
        "final_accuracy": [e for e in marks if e["event"] == "round_end"][-1].get("accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CONTENDERS}
    for rep in range(args.reps):
        for contender in CONTENDERS:
            with tempfile.TemporaryDirectory() as tmp:
                if contender == "fedsim":
                    results[contender].append(run_fedsim(Path(tmp)))
                else:
                    results[contender].append(run_marked(contender, Path(tmp)))
            print(f"rep {rep + 1}/{args.reps} {contender}: {results[contender][-1]}", file=sys.stderr)
    keys = ("end_to_end_s", "startup_s", "steady_round_s", "peak_pss_mib",
            "overhead_per_client_call_s", "final_accuracy")
    medians = {
        c: {k: (statistics.median(v) if (v := [r[k] for r in runs if r[k] is not None]) else None)
            for k in keys}
        for c, runs in results.items()
    }
    print(f"workload: {W.__doc__.strip().splitlines()[0]} ({args.reps} interleaved repetitions)")
    print("| contender | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for c in CONTENDERS:
        cells = ["—" if medians[c][k] is None else f"{medians[c][k]:.3f}" for k in keys]
        print(f"| {c} | " + " | ".join(cells) + " |")
    f, p, b = medians["fedsim"], medians["plain_flower"], medians["bare_compute"]
    print()
    print(f"steady round, fedsim / bare compute: {f['steady_round_s'] / b['steady_round_s']:.3f} (target <= 1.15)")
    print(f"end to end, plain Flower / fedsim:   {p['end_to_end_s'] / f['end_to_end_s']:.3f} (target >= 2)")
    print(f"start-up, fedsim:                    {f['startup_s']:.2f} s (target <= 6)")


if __name__ == "__main__":
    main()
