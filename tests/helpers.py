"""What more than one test module needs: the tiny run, config composition, fakes, tiny fixtures.

Test modules import from here and never from each other, so a test file can be read, run or
moved on its own. The tiny run's settings live in ``conf/debug/tiny.yaml`` (``+debug=tiny``), not
here; this module only names them.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import (
    Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict,
)
from flwr.serverapp import Grid
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn

from clients.client_app import ClientEnvironment, train_reply
from clients.training import LocalRecipe
from fedsim import keys
from fedsim.fleet.profile import DeviceProfile
from fedsim.models.state import exchangeable_state
from fedsim.run.preparation import prepare
from fedsim.strategy.virtual_clients import VirtualClients, client_id_of
from fedsim.updates import UpdateRule

if TYPE_CHECKING:
    from fedsim.strategy.central_dp import CentralDP

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# --- runs through the real command line (Hydra, Flower, Ray) ----------------------------------

TINY = ["+debug=tiny"]  # conf/debug/tiny.yaml: 2 rounds, 4 of 20 phones, a 0.35x MobileNetV2
WALL_FIELDS = ("wall_s", "elapsed_wall_s", "client_wall_s", "eval_wall_s")  # the only fields a rerun may change


def run_cli(out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``python run_sim.py +debug=tiny <overrides>`` into ``out_dir``; fails the test on error."""
    result = subprocess.run(
        [sys.executable, "run_sim.py", *TINY, *overrides, f"hydra.run.dir={out_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def start_run(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``run_sim.py +debug=tiny <overrides>`` in its own process group (kill -9 takes Ray down
    with the driver)."""
    return subprocess.Popen(
        [sys.executable, "run_sim.py", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )


def kill_after_rounds(run_dir: Path, count: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until ``run_dir`` has ``count`` round records, then kill -9 the run and its Ray."""
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{count} rounds did not finish"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def resume_run(run_dir: Path) -> subprocess.CompletedProcess:
    """``run_sim.py resume=<run_dir>``; fails the test on error."""
    result = subprocess.run(
        [sys.executable, "run_sim.py", f"resume={run_dir}",
         f"hydra.run.dir={run_dir}/resumed-{time.monotonic_ns()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def rounds(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``, one per round."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the composed config, in-process -----------------------------------------------------------


def options(group: str) -> list[str]:
    """The option names of a ``conf/`` group, sorted."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(*overrides: str) -> DictConfig:
    """``conf/config.yaml`` composed with these overrides, as ``run_sim.py`` would."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def prepared(*overrides: str):
    """The run's prepared parts for a 0.35x-wide model and these overrides."""
    return prepare(make_cfg("model.width_mult=0.35", *overrides))


# --- one round driven in-process: the ClientApp's function answers VirtualClients' messages -----


class FakeGrid(Grid):
    """Just enough of a Grid: a fixed set of node ids, like Flower's os.urandom ones."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def set_run(self, run): ...
    @property
    def run(self): ...
    def create_message(self, *a, **k): ...
    def get_node_ids(self):
        return list(self.node_ids)
    def push_messages(self, messages): ...
    def pull_messages(self, message_ids): ...
    def send_and_receive(self, messages, *, timeout=None): ...


def environment(prep, rule: UpdateRule, **changes) -> ClientEnvironment:
    """A phone's environment for ``prep``: one epoch of SGD at batch 8, one thread."""
    env = ClientEnvironment(
        shards=prep.shards, build_model=prep.builder,
        recipe=LocalRecipe(epochs=1, batch_size=8, lr=0.05, momentum=0.9), seed=0, threads=1,
        update=rule,
    )
    return replace(env, **changes)


def one_round(env, stack, sampler, global_arrays, server_round=1):
    """Configure, answer every message with the client function, aggregate."""
    wrapper = VirtualClients(stack, sampler)
    grid = FakeGrid([1, 2])
    messages = list(wrapper.configure_train(server_round, global_arrays, ConfigRecord(), grid))
    replies = []
    for m in messages:
        m.metadata.__dict__["_message_id"] = f"m{client_id_of(m)}"
        replies.append(train_reply(env, m))
    aggregated, _ = wrapper.aggregate_train(server_round, list(reversed(replies)))
    return aggregated, messages, replies


def initial(prep) -> tuple[nn.Module, ArrayRecord]:
    """The model ``prep`` builds under seed 0, and its exchanged arrays."""
    torch.manual_seed(0)
    model = prep.builder()
    return model, ArrayRecord(exchangeable_state(model))


def parameters(model: nn.Module) -> frozenset[str]:
    """The names of the model's trainable parameters."""
    return frozenset(n for n, _ in model.named_parameters())


def replies_for(dp: CentralDP, start, updates, examples) -> list[Message]:
    """Replies to ``dp``'s round-1 messages: client ``i`` sends ``start + updates[i]``."""
    msgs = list(dp.configure_train(1, _vector(start), ConfigRecord(), FakeGrid([1, 2, 3])))
    out = []
    for i, (update, n) in enumerate(zip(updates, examples)):
        content = RecordDict(
            {
                "arrays": _vector(np.asarray(start) + np.asarray(update)),
                keys.METRICS: MetricRecord(
                    {keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: 1.0, keys.CLIENT_ID: i}
                ),
            }
        )
        out.append(Message(content, reply_to=msgs[i % len(msgs)]))
    return out


def _vector(values) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))})


# --- a tiny model and phones for the device simulation -----------------------------------------

INPUT = (1, 8, 8)
SAMPLES = 20  # every phone's shard


def tiny_model() -> nn.Module:
    """Two 8-channel convolutions with BatchNorm, split into ``features`` and ``classifier``."""
    torch_seq = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            ),
            classifier=nn.Linear(8, 10),
        )
    )
    return torch_seq


def profile(name: str, ram_mb: float, **changes) -> DeviceProfile:
    """A slow, always-online phone with ``ram_mb`` of RAM; ``changes`` replace any field."""
    fields = dict(
        name=name, ram_mb=ram_mb, fp32_gflops=0.001, int8_gflops=0.004, int8_accelerator="none",
        uplink_mbps=1.0, downlink_mbps=4.0, latency_ms=50.0, energy_j_per_gflop=2.0,
        energy_j_per_gflop_int8=0.5, energy_j_per_mb=1.5, availability=(1.0,) * 24,
    )
    return DeviceProfile(**(fields | changes))


def sent(cid: int) -> Message:
    """The server's train message to phone ``cid``: two local epochs."""
    config = ConfigRecord({keys.CLIENT_ID: cid, keys.LOCAL_EPOCHS: 2})
    return Message(RecordDict({"config": config}), dst_node_id=1, message_type=MessageType.TRAIN)


# --- dataset files -----------------------------------------------------------------------------

IDX_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX: magic 00 00 <code> <ndim>, big-endian uint32 dims and data."""
    header = (
        bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim])
        + np.array(array.shape, ">u4").tobytes()
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion_files(directory: Path) -> None:
    """Tiny Fashion-MNIST. Two train images are all 255 and two all 0, so on the [0, 1] scale the
    train mean is 0.5 and the std 0.5, and standardized pixels are exactly +1 or -1."""
    directory.mkdir(parents=True, exist_ok=True)
    train = np.zeros((4, 28, 28), np.uint8)
    train[:2] = 255
    test = np.array([np.full((28, 28), 255), np.zeros((28, 28))], np.uint8)
    arrays = {
        "train-images-idx3-ubyte.gz": train,
        "train-labels-idx1-ubyte.gz": np.array([0, 9, 3, 3], np.uint8),
        "t10k-images-idx3-ubyte.gz": test,
        "t10k-labels-idx1-ubyte.gz": np.array([1, 2], np.uint8),
    }
    for name, array in arrays.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(array)))


def write_fashion_like_files(directory: Path, train: int = 1000, test: int = 200) -> None:
    """Fashion-MNIST-shaped IDX files of random 28x28 pixels, labels cycling 0..9 (so every
    class has ``train / 10`` images): enough for every partition of 100 phones, on any machine."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(test) % 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        (directory / name).write_bytes(gzip.compress(idx_bytes(array)))
