"""Measure a command's whole process tree (driver, Ray's GCS and raylet, every worker).

Linux ``/proc`` only, no dependencies. Memory is summed as PSS (proportional set size: shared
pages such as torch's libraries are split between the processes that map them), so the sum over
a tree of processes is the memory the tree really costs; RSS sums would count shared pages once
per worker.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, from /proc/*/stat."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(root: int) -> list[int]:
    tree, out, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, []))
    return out


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class Measurement:
    peak_pss_bytes: int
    wall_s: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], cwd: Path, interval_s: float = 0.25) -> Measurement:
    """Run ``cmd`` and sample its tree's summed PSS every ``interval_s``; keep the peak."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, sum(pss_bytes(p) for p in descendants(proc.pid)))
        time.sleep(interval_s)
    out, err = proc.communicate()
    return Measurement(peak, time.perf_counter() - start, proc.returncode, out, err)
