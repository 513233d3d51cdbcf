"""Soak: a long run of a tiny workload with injected faults; does anything leak or stop?

1,000 rounds (``--rounds``) of digits with MobileNetV2 width 0.35, 20 phones, 4 per round, one
local epoch, 10 % of client-rounds raising (``faults.client_error_rate=0.1``) and one Ray actor
killed (``faults.kill_actor_at_round``, round 500 by default), no central evaluation except
every 100 rounds. Reports rounds completed, failures by reason, replies recovered after the
kill, and memory: the PSS of every process of the tree, grouped by role (the driver, which is
the server; Ray's GCS, raylet and helpers; the ClientApp actors), every ``--every`` rounds
(default 50), written to ``--csv`` and summarised as the growth of each role between the first
sample after warm-up and the last, and its slope over the second half of the run (after the
killed actor's restart), in MiB per 100 rounds. Two samples cannot tell a leak from warm-up;
a slope over many samples can.

    python bench/soak.py [--rounds 1000] [--every 50] [--csv soak_pss.csv] [--env KEY=VALUE ...]
                         [--override key=value ...]

``--env`` sets environment variables for the run (e.g. ``MALLOC_ARENA_MAX=2``, to test whether
memory growth is the C allocator's fragmentation), inherited by Ray's processes; ``--override``
adds ``run_sim.py`` overrides (e.g. ``update.compression=int8``, to soak the decoding path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.process_tree import descendants, pss_bytes

ROOT = Path(__file__).resolve().parents[1]


def role(pid: int, driver: int) -> str:
    """Which part of the simulation a process is, from its command line."""
    if pid == driver:
        return "driver (server)"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    for marker, name in (("gcs_server", "ray gcs"), ("raylet", "ray raylet"),
                         ("ClientAppActor", "client actors"), ("ray::", "client actors"),
                         ("default_worker", "client actors"), ("dashboard", "ray dashboard"),
                         ("log_monitor", "ray helpers"), ("monitor", "ray helpers")):
        if marker in cmdline or marker in comm:
            return name
    return f"other ({comm})"


def sample_roles(driver: int) -> dict[str, float]:
    """MiB of PSS per role, summed over the role's processes, and the process count."""
    out: dict[str, float] = {}
    for pid in descendants(driver):
        name = role(pid, driver)
        out[name] = out.get(name, 0.0) + pss_bytes(pid) / 2**20
        out[f"#{name}"] = out.get(f"#{name}", 0) + 1
    return out


def slope_per_100(rounds: list[int], mib: list[float]) -> float:
    """Least-squares slope of ``mib`` against ``rounds``, MiB per 100 rounds."""
    if len(rounds) < 2:
        return float("nan")
    mean_r, mean_m = sum(rounds) / len(rounds), sum(mib) / len(mib)
    cov = sum((r - mean_r) * (m - mean_m) for r, m in zip(rounds, mib, strict=True))
    var = sum((r - mean_r) ** 2 for r in rounds)
    return 100 * cov / var


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50, help="sample PSS every n rounds")
    parser.add_argument("--csv", type=Path, default=None, help="write the PSS samples here")
    parser.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra environment variables for the run")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra run_sim.py overrides")
    args = parser.parse_args()
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    kill_at = args.rounds // 2
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        cmd = [
            sys.executable, "run_sim.py", f"simulation.rounds={args.rounds}",
            "simulation.population=20", "simulation.clients_per_round=4",
            "simulation.local.epochs=1", "simulation.eval_every=100", "model.width_mult=0.35",
            "faults.client_error_rate=0.1", f"faults.kill_actor_at_round={kill_at}",
            "audit=none", "progress=lines", f"hydra.run.dir={run_dir}", *args.override,
        ]
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        metrics, samples = run_dir / "metrics.jsonl", {}
        marks = sorted({10, *range(args.every, args.rounds, args.every), args.rounds - 5})
        while proc.poll() is None:
            done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
            for mark in marks:
                if mark not in samples and done >= mark:
                    samples[mark] = sample_roles(proc.pid)
            time.sleep(0.5)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(err[-2000:])
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
    failures: Counter[str] = Counter()
    for r in records:
        failures.update(r["failures"])
    accounted = all(
        r["completed"] + r["failed"] + sum(r.get("dropped", {}).values()) == r["sampled"]
        for r in records
    )
    print(f"rounds completed: {len(records)} / {args.rounds} in {time.time() - started:.0f} s")
    print(f"client-rounds: {sum(r['sampled'] for r in records)} sampled, "
          f"{sum(r['completed'] for r in records)} completed, failures {dict(failures)}, "
          f"recovered after the actor kill {sum(r['recovered'] for r in records)}; "
          f"every failure accounted for: {accounted}")
    print(f"final accuracy {records[-1]['accuracy']}")
    report_memory(samples, args.rounds, kill_at, args.csv)


def report_memory(
    samples: dict[int, dict[str, float]], rounds: int, kill_at: int, csv: Path | None
) -> None:
    """Per-role PSS table, growth and second-half slope."""
    roles = sorted({k for s in samples.values() for k in s if not k.startswith("#")})
    marks = sorted(samples)
    if csv is not None:
        lines = ["round," + ",".join(roles) + ",total"]
        for m in marks:
            values = [samples[m].get(r, 0.0) for r in roles]
            lines.append(f"{m}," + ",".join(f"{v:.1f}" for v in values) + f",{sum(values):.1f}")
        csv.write_text("\n".join(lines) + "\n")
    print("\nPSS (MiB) by role:")
    print("| round | " + " | ".join(roles) + " | total |")
    print("|---:|" + "---:|" * (len(roles) + 1))
    for m in marks:
        values = [samples[m].get(r, 0.0) for r in roles]
        print(f"| {m} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {sum(values):.0f} |")
    late = [m for m in marks if m > kill_at + 50]  # after the restarted actor warmed up
    print(f"\nslope over rounds {late[0] if late else '-'}..{marks[-1]} (MiB per 100 rounds):")
    for r in [*roles, "total"]:
        series = [
            sum(v for k, v in samples[m].items() if not k.startswith("#")) if r == "total"
            else samples[m].get(r, 0.0)
            for m in late
        ]
        print(f"  {r}: {slope_per_100(late, series):+.2f}")


if __name__ == "__main__":
    main()
