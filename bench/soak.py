"""Soak: a long run of a tiny workload with injected faults; does anything leak or stop?

1,000 rounds (``--rounds``) of digits with MobileNetV2 width 0.35, 20 phones, 4 per round, one
local epoch, 10 % of client-rounds raising (``faults.client_error_rate=0.1``) and one Ray actor
killed (``faults.kill_actor_at_round``, round 500 by default), no central evaluation except
every 100 rounds. Reports rounds completed, failures by reason, replies recovered after the
kill, and the summed PSS of the whole process tree around round 10 and at the end.

    python bench/soak.py [--rounds 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.process_tree import descendants, pss_bytes

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args()
    kill_at = args.rounds // 2
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        cmd = [
            sys.executable, "run_sim.py", f"simulation.rounds={args.rounds}",
            "simulation.population=20", "simulation.clients_per_round=4",
            "simulation.local.epochs=1", "simulation.eval_every=100", "model.width_mult=0.35",
            "faults.client_error_rate=0.1", f"faults.kill_actor_at_round={kill_at}",
            "audit=none", "progress=lines", f"hydra.run.dir={run_dir}",
        ]
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        metrics, pss_at = run_dir / "metrics.jsonl", {}
        while proc.poll() is None:
            done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            for mark in (10, args.rounds - 5):
                if mark not in pss_at and done >= mark:
                    pss_at[mark] = sum(pss_bytes(p) for p in descendants(proc.pid)) / 2**20
            time.sleep(0.5)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(err[-2000:])
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
    failures: Counter[str] = Counter()
    for r in records:
        failures.update(r["failures"])
    accounted = all(r["completed"] + r["failed"] == r["sampled"] for r in records)
    print(f"rounds completed: {len(records)} / {args.rounds} in {time.time() - started:.0f} s")
    print(f"client-rounds: {sum(r['sampled'] for r in records)} sampled, "
          f"{sum(r['completed'] for r in records)} completed, failures {dict(failures)}, "
          f"recovered after the actor kill {sum(r['recovered'] for r in records)}; "
          f"every failure accounted for: {accounted}")
    print(f"final accuracy {records[-1]['accuracy']}")
    for mark, mib in sorted(pss_at.items()):
        print(f"process-tree PSS at round {mark}: {mib:.0f} MiB")


if __name__ == "__main__":
    main()
