"""fedsim vs plain Flower vs bare compute on one workload, interleaved, medians and ratios.

The workloads are fixed in ``bench/workload.py`` (``--workload default``: the README's default
run; ``short``; ``cross_device``: 1,000 phones, 100 a round; ``cross_device_10k``: 10,000 phones,
1,000 a round). Each repetition runs every contender once, one after another, so drift on a
shared machine hits all alike:

- ``fedsim``: ``run_sim.py`` with the workload's overrides and ``simulation.bundle=true`` (one
  message per slot a round, issue 25);
- ``fedsim_partial_sums``: bundles with ``simulation.partial_sums=true`` (each slot replies with
  its phones' mean model);
- ``fedsim_per_phone``: the same with ``simulation.bundle=false`` (one message per phone);
- ``fedsim_before``: ``run_sim.py`` of another checkout, ``$BENCH_BEFORE_ROOT`` (e.g. ``git
  worktree add --detach ../before <commit>``), with the workload's overrides only: the code
  before a change, measured beside it;
- ``plain_flower``: ``bench/plain_flower.py``, the workload the way Flower's quickstart writes it;
- ``bare_1x2``: ``bench/bare_compute.py``: the same training in one process on 2 threads;
- ``bare_2x1``: ``bench/bare_compute.py --procs 2``: two processes of one thread each, the
  layout fedsim's two slots use, with nothing else: the limit of this machine.

Per contender:

- ``end_to_end_s``: process start to exit;
- ``startup_s``: process start to the first round being dispatched (fedsim: when the first
  round record lands minus that round's own wall time; the others: their round-0 mark);
- ``first_round_s``: the first round (actor start-up, first loads);
- ``steady_round_s``: median wall per round over rounds 2..R;
- ``peak_pss_mib``: peak summed PSS of the whole process tree (driver, Ray, every actor);
- ``overhead_per_client_call_s`` (fedsim only: it reports the clients' compute): (round wall -
  clients' compute / parallel slots) / cohort, the median over steady rounds;
  ``overhead_without_eval_s`` the same with the round's central evaluation taken out of its
  wall (a cost per round, not per phone);
- ``final_accuracy``.

    python bench/compare.py [--workload default|short|cross_device|cross_device_10k] [--reps 3]
                            [--json results.json]
                            [--contenders fedsim plain_flower ...]
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
from bench.process_tree import descendants, pss_bytes
from bench.workload import WORKLOADS, Workload

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = ("fedsim", "fedsim_partial_sums", "fedsim_per_phone", "fedsim_before",
              "plain_flower", "bare_1x2", "bare_2x1")
# run_sim.py overrides of each fedsim contender, after the workload's own.
FEDSIM = {
    "fedsim": ["simulation.bundle=true"],
    "fedsim_partial_sums": ["simulation.bundle=true", "simulation.partial_sums=true"],
    "fedsim_per_phone": ["simulation.bundle=false"],
    "fedsim_before": [],
}
FIGURES = ("end_to_end_s", "startup_s", "first_round_s", "steady_round_s", "peak_pss_mib",
           "overhead_per_client_call_s", "overhead_without_eval_s", "final_accuracy")


def measure(
    cmd: list[str], env: dict[str, str], watch: Path | None, cwd: Path = ROOT
) -> dict[str, float]:
    """Run ``cmd``; sample the tree's PSS every second; note when ``watch`` first gets a line.

    One PSS sample of a simulation's ~10 processes costs ~45 ms of kernel time (and holds each
    process's memory-map lock while it is read); every 0.25 s it slowed what it measured.
    """
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    peak, first_line, next_sample = 0, None, 0.0
    while proc.poll() is None:
        now = time.time()
        if now >= next_sample:
            peak = max(peak, sum(pss_bytes(p) for p in descendants(proc.pid)))
            next_sample = now + 1.0
        if first_line is None and watch is not None and watch.exists() and watch.stat().st_size:
            first_line = now
        time.sleep(0.02)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed:\n{err[-2000:]}")
    return {"launched": launched, "ended": time.time(), "peak": peak, "first_line": first_line}


def run_fedsim(
    workload: Workload, tmp: Path, extra: list[str], root: Path = ROOT
) -> dict[str, float | None]:
    out = tmp / "fedsim"
    m = measure(
        [sys.executable, "run_sim.py", *workload.fedsim_overrides, *extra, f"hydra.run.dir={out}"],
        dict(os.environ), out / "metrics.jsonl", cwd=root,
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:]
    slots = workload.total_cpus // workload.client_cpus
    overhead = statistics.median(
        (r["wall_s"] - r["client_wall_s"] / slots) / workload.cohort for r in steady
    )
    # The same without the round's central evaluation, a cost per round, not per phone (plain
    # Flower pays it too). Older checkouts do not record it (fedsim_before): no figure.
    without_eval = statistics.median(
        (r["wall_s"] - r["eval_wall_s"] - r["client_wall_s"] / slots) / workload.cohort
        for r in steady
    ) if all("eval_wall_s" in r for r in steady) else None
    return {
        "end_to_end_s": m["ended"] - m["launched"],
        # The first record lands (fsynced) when round 1 ends; that round began wall_s earlier.
        "startup_s": m["first_line"] - records[0]["wall_s"] - m["launched"],
        "first_round_s": records[0]["wall_s"],
        "steady_round_s": statistics.median(r["wall_s"] for r in steady),
        "peak_pss_mib": m["peak"] / 2**20,
        "overhead_per_client_call_s": overhead,
        "overhead_without_eval_s": without_eval,
        "final_accuracy": records[-1]["accuracy"],
    }


def run_marked(workload: Workload, script: list[str], tmp: Path) -> dict[str, float | None]:
    events = tmp / "events.jsonl"
    env = {**os.environ, "BENCH_EVENTS": str(events), "BENCH_WORKLOAD": workload.name,
           "FLWR_TELEMETRY_ENABLED": "0"}
    m = measure([sys.executable, *script], env, None)
    marks = [json.loads(x) for x in events.read_text().splitlines()]
    ends = {e["round"]: e["t"] for e in marks if e["event"] == "round_end"}
    walls = [ends[r] - ends[r - 1] for r in range(2, workload.rounds + 1)]
    return {
        "end_to_end_s": m["ended"] - m["launched"],
        "startup_s": ends[0] - m["launched"],
        "first_round_s": ends[1] - ends[0],
        "steady_round_s": statistics.median(walls),
        "peak_pss_mib": m["peak"] / 2**20,
        "overhead_per_client_call_s": None,
        "overhead_without_eval_s": None,
        "final_accuracy": [e for e in marks if e["event"] == "round_end"][-1].get("accuracy"),
    }


def run_one(contender: str, workload: Workload, tmp: Path) -> dict[str, float | None]:
    if contender in FEDSIM:
        root = Path(os.environ["BENCH_BEFORE_ROOT"]) if contender == "fedsim_before" else ROOT
        return run_fedsim(workload, tmp, FEDSIM[contender], root)
    script = {
        "plain_flower": ["bench/plain_flower.py"],
        "bare_1x2": ["bench/bare_compute.py", "--procs", "1"],
        "bare_2x1": ["bench/bare_compute.py", "--procs", "2"],
    }[contender]
    return run_marked(workload, script, tmp)


def medians(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    out = {}
    for key in FIGURES:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def report(workload: Workload, reps: int, results: dict[str, list[dict]]) -> None:
    """The table, then each target of issue 7 against its measured ratio."""
    med = {c: medians(runs) for c, runs in results.items()}
    print(f"workload {workload.name}: {workload} ({reps} interleaved repetitions, medians)")
    print("| contender | " + " | ".join(FIGURES) + " |")
    print("|---|" + "---:|" * len(FIGURES))
    for c in med:
        cells = ["—" if med[c][k] is None else f"{med[c][k]:.3f}" for k in FIGURES]
        print(f"| {c} | " + " | ".join(cells) + " |")
    for name in ("fedsim", "fedsim_partial_sums"):
        if name in med:
            print()
            against(name, med)


def against(name: str, med: dict[str, dict]) -> None:
    """The fedsim contender ``name`` against the others and each target."""
    f = med[name]
    for bare in ("bare_1x2", "bare_2x1"):
        if bare in med:
            ratio = f["steady_round_s"] / med[bare]["steady_round_s"]
            print(f"steady round, {name} / {bare}: {ratio:.3f} (target <= 1.15)")
    if "plain_flower" in med:
        ratio = med["plain_flower"]["end_to_end_s"] / f["end_to_end_s"]
        print(f"end to end, plain Flower / {name}: {ratio:.3f} (issue 7: >= 2; 25: >= 3.5)")
        ratio = med["plain_flower"]["steady_round_s"] / f["steady_round_s"]
        print(f"steady round, plain Flower / {name}: {ratio:.3f} (issue 25: >= 4)")
    for other in ("fedsim_per_phone", "fedsim_before"):
        if other in med:
            for key in ("steady_round_s", "end_to_end_s"):
                ratio = med[other][key] / f[key]
                print(f"{key}, {other} / {name}: {ratio:.3f}")
    overhead = f["overhead_per_client_call_s"] * 1000
    without = f["overhead_without_eval_s"]
    print(f"overhead per client call, {name}: {overhead:.1f} ms, "
          f"{without * 1000:.1f} ms without the round's evaluation (issue 25: <= 3 ms)")
    print(f"start-up, {name}: {f['startup_s']:.2f} s (target <= 6)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="default")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS,
                        default=[c for c in CONTENDERS if c != "fedsim_before"])
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    results: dict[str, list[dict]] = {c: [] for c in args.contenders}
    for rep in range(args.reps):
        for contender in args.contenders:
            with tempfile.TemporaryDirectory() as tmp:
                results[contender].append(run_one(contender, workload, Path(tmp)))
            shown = {k: round(v, 3) for k, v in results[contender][-1].items() if v is not None}
            print(f"rep {rep + 1}/{args.reps} {contender}: {shown}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"workload": workload.name, "runs": results}, indent=1))
    report(workload, args.reps, results)


if __name__ == "__main__":
    main()
