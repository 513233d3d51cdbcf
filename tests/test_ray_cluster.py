"""A run joins an existing Ray cluster through `simulation.backend.address` (issue: scaling).

Starts a single-node cluster on loopback with `ray start --head`, runs two rounds against it,
and stops exactly that cluster (by its private temp dir; `ray stop` would kill every Ray on the
machine, including other runs').
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # starts a Ray cluster and a run on it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_pids(temp_dir: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def stop_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_pids(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while cluster_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="fedsim-test-cluster-")
    port = free_port()
    started = subprocess.run(
        ["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120,
    )
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop_cluster(temp_dir)


def test_two_rounds_against_a_running_cluster(ray_cluster: str, tmp_path: Path) -> None:
    run_cli(tmp_path, f"simulation.backend.address={ray_cluster}", "audit=none")
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["completed"] == 4 and r["failed"] == 0 for r in records)
