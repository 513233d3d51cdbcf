"""Checkpoints hold data only: strategy state as arrays and JSON, one-line refusals, O(1) size."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, Krum
from omegaconf import OmegaConf
from safetensors.numpy import save as save_tensors

from fedsim.privacy.plan import PrivacyPlan
from fedsim.report.run_log import RoundRecord
from fedsim.run import checkpoint
from fedsim.run.checkpoint import CHECKPOINT_FILE, LEGACY_FILE, CheckpointError
from fedsim.run.state import RunState, check_identity, restored_records, run_identity
from fedsim.server.sampler import CohortSampler
from fedsim.strategy.central_dp import CentralDP
from fedsim.strategy.saved_state import StackState, StateError
from tests.helpers import ROOT, TINY, FakeGrid, make_cfg

START = np.array([1.0, 2.0, 3.0], dtype=np.float32)


def model(values=START) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.asarray(values, dtype=np.float32))})


def train_round(strategy, server_round: int, arrays: ArrayRecord, updates) -> ArrayRecord:
    """Configure a round, reply ``arrays + update`` from each of three nodes, aggregate."""
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), FakeGrid([1, 2, 3])))
    start = arrays["w"].numpy()
    replies = [
        Message(RecordDict({"arrays": model(start + np.float32(u)),
                            "metrics": MetricRecord({"num-examples": 10})}), reply_to=m)
        for m, u in zip(messages, updates)
    ]
    aggregated, _ = strategy.aggregate_train(server_round, replies)
    return aggregated


def resumed(strategy, fresh, round_start: ArrayRecord):
    """``fresh`` with ``strategy``'s state, through the checkpoint file's bytes and back."""
    content, tensors = StackState(strategy).capture(round_start)
    saved = checkpoint.decode(checkpoint.encode({"round": 1, "s": content}, tensors), Path("x"))
    StackState(fresh).restore(saved.content["s"], saved.tensors)
    return fresh


@pytest.mark.parametrize(
    "build", [lambda: FedAdam(eta=0.1), lambda: FedAvgM(server_momentum=0.9, server_learning_rate=0.5),
              lambda: CentralDP(FedAdam(eta=0.1), 1.0, 0.5, 3, seed=4)],
    ids=["fedadam", "fedavgm", "central_dp_fedadam"],
)
def test_a_restored_strategy_continues_bit_identically(build) -> None:
    # Round 1 on one instance; round 2 on it and on a fresh one given its saved state.
    original = build()
    after_one = train_round(original, 1, model(), [0.5, -0.25, 1.0])
    copy = resumed(original, build(), model())
    updates = [0.125, 0.75, -0.5]
    expected = train_round(original, 2, after_one, updates)["w"].numpy()
    got = train_round(copy, 2, after_one, updates)["w"].numpy()
    assert got.tobytes() == expected.tobytes() and got.dtype == expected.dtype


def test_fedadam_state_is_its_moments_by_hand() -> None:
    # FedAvg of +0.5, -0.25, +1.0 (equal weights) moves w by 0.41666..; m_t = 0.1 * delta.
    strategy = FedAdam(eta=0.1, beta_1=0.9)
    train_round(strategy, 1, model(), [0.5, -0.25, 1.0])
    content, tensors = StackState(strategy).capture(model())
    (layer,) = content["layers"]
    assert layer["class"] == "flwr.serverapp.strategy.fedadam.FedAdam"
    m = tensors["strategy.0.0.0"]  # the "m_t" entry's first (only) array
    np.testing.assert_allclose(m, [0.1 * 1.25 / 3] * 3, rtol=1e-6)
    assert content["unsaved"] is None


def test_stateless_stock_strategies_save_nothing() -> None:
    for strategy in (FedAvg(), Krum()):
        content, tensors = StackState(strategy).capture(model())
        assert content["layers"][0]["state"] == {"dict": []} and tensors == {}


def test_privacy_wrapper_state_is_constant_size() -> None:
    dp = CentralDP(FedAvg(), 1.0, 0.5, 3, seed=0)
    dp.clipped, dp.norms_used = [(1, 4), (2, 4), (0, 3)], {1: 1.0, 2: 0.9, 3: 0.8}
    assert dp.state_dict() == {"clipping_norm": 1.0, "clipped": [3, 11], "last_norm": [3, 0.8]}
    fresh = CentralDP(FedAvg(), 1.0, 0.5, 3, seed=0)
    fresh.load_state_dict(dp.state_dict())
    assert (fresh.clipped, fresh.norms_used) == ([(3, 11)], {3: 0.8})  # what the summary reads


class Counting(FedAvg):
    """Keeps a count without saying how to save it."""

    def configure_train(self, server_round, arrays, config, grid):
        self.seen = getattr(self, "seen", 0) + 1
        self._global = arrays  # per-round scratch: the model this round started from
        return super().configure_train(server_round, arrays, config, grid)


class CountingWithHook(Counting):
    def state_dict(self):
        return {"seen": self.seen, "history": [np.float32(0.5), (1, "a")]}

    def load_state_dict(self, state):
        self.seen = state["seen"]
        self.history = state["history"]


def test_user_state_without_hook_is_named_and_refused() -> None:
    strategy = Counting()
    tracker = StackState(strategy)
    train_round(strategy, 1, model(), [0.5, 0.5, 0.5])
    content, _ = tracker.capture(model())
    assert content["unsaved"] == "Counting.seen"  # _global held the round's model: not state
    with pytest.raises(StateError, match=r"^Counting.seen changed between rounds .* cannot be resumed"):
        StackState(Counting()).restore(content, {})


def test_user_state_through_the_hook() -> None:
    strategy = CountingWithHook()
    train_round(strategy, 1, model(), [0.5, 0.5, 0.5])
    content, tensors = StackState(strategy).capture(model())
    fresh = CountingWithHook()
    StackState(fresh).restore(content, tensors)
    assert fresh.seen == 1 and fresh.history == [np.float32(0.5), (1, "a")]
    assert type(fresh.history[0]) is np.float32  # a numpy scalar stays one (same arithmetic)


def test_a_hook_returning_an_object_is_refused_in_one_line() -> None:
    class Bad(FedAvg):
        def state_dict(self):
            return {"rng": np.random.default_rng(0)}

        def load_state_dict(self, state): ...

    with pytest.raises(StateError, match=r"^strategy: Bad.state_dict\(\) holds a Generator"):
        StackState(Bad()).capture(model())


# --- the file ----------------------------------------------------------------------------------


def written(tmp_path: Path) -> Path:
    path = tmp_path / CHECKPOINT_FILE
    checkpoint.write_atomically(path, checkpoint.encode({"round": 3}, {"model/w": START}))
    return path


def test_round_trip_and_one_line_refusals(tmp_path: Path) -> None:
    path = written(tmp_path)
    saved = checkpoint.load(tmp_path)
    assert saved.round == 3 and saved.tensors["model/w"].tobytes() == START.tobytes()
    payload = path.read_bytes()
    cases = {
        "torn": (payload[: len(payload) - 5], "is torn or not a checkpoint"),
        "edited": (payload[:-4] + np.float32(9).tobytes(), "does not match its content hash"),
        "foreign": (save_tensors({"w": START}), "is not a fedsim checkpoint"),
        "future": (payload.replace(b'"version":"2"', b'"version":"3"'), "format version 3"),
        "noise": (b"\x00" * 40, "is torn or not a checkpoint"),
    }
    for name, (bad, reason) in cases.items():
        path.write_bytes(bad)
        with pytest.raises(CheckpointError) as err:
            checkpoint.load(tmp_path)
        assert reason in str(err.value) and "\n" not in str(err.value), name


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    sampler = CohortSampler(20, 4, seed=0)
    saved = checkpoint.Checkpoint({"round": 1, "run": run_identity(0, sampler, PrivacyPlan())}, {})
    check_identity(saved, run_identity(0, sampler, PrivacyPlan()), tmp_path)
    with pytest.raises(CheckpointError, match="belongs to another run: its seed is 0, this run's config gives 3"):
        check_identity(saved, run_identity(3, sampler, PrivacyPlan()), tmp_path)


HOSTILE = '''
import os, pickle, sys
class Payload:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
open(sys.argv[1], "wb").write(pickle.dumps(Payload()))
'''


def test_a_hostile_pickle_is_never_opened(tmp_path: Path) -> None:
    # A run directory as a colleague would send it: its config, and a checkpoint.pkl whose
    # unpickling would create a marker file.
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(make_cfg(*TINY), tmp_path / ".hydra" / "config.yaml")
    marker = tmp_path / "code-ran"
    subprocess.run([sys.executable, "-c", HOSTILE, str(tmp_path / LEGACY_FILE), str(marker)], check=True)
    result = subprocess.run(
        [sys.executable, "run_sim.py", f"resume={tmp_path}", f"hydra.run.dir={tmp_path}/resumed"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert not marker.exists()
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fedsim: error: resume: {tmp_path / LEGACY_FILE} is a pickle checkpoint of an older "
        "fedsim; unpickling can run any code, so fedsim never opens one (rerun the config)"
    ]


# --- round records come from metrics.jsonl -----------------------------------------------------


def record(r: int) -> RoundRecord:
    return RoundRecord(round=r, accuracy=0.5, loss=1.0, train_loss=1.0, sampled=4, completed=4,
                       failed=0, clients=list(range(r, r + 40)), sim_time_s=10.0 * r)


def run_state(tmp_path: Path, strategy=None) -> RunState:
    return RunState(tmp_path, StackState(strategy or FedAvg()), PrivacyPlan(), model(), 1,
                    {"seed": 0, "sampler": "s", "accountant": None})


def test_checkpoint_size_does_not_grow_with_rounds(tmp_path: Path) -> None:
    state, sizes = run_state(tmp_path, FedAdam()), {}
    for r in range(1, 201):
        state.on_round(record(r), model())
        sizes[r] = state.path.stat().st_size
    # Each record is ~500 bytes of metrics.jsonl; the checkpoint only grows by the digits of
    # its round and line counts (10 -> 200: one more digit in each).
    assert (tmp_path / "metrics.jsonl").stat().st_size > 200 * 400
    assert sizes[200] - sizes[10] <= 2 and sizes[99] == sizes[10]


def test_resume_drops_rounds_after_the_checkpoint(tmp_path: Path) -> None:
    state = run_state(tmp_path)
    for r in (1, 2):
        state.on_round(record(r), model())
    saved = checkpoint.load(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as fh:  # round 3 recorded, then killed before its checkpoint,
        fh.write(record(3).to_json() + "\n" + record(4).to_json()[:30])  # mid-way through 4
    assert [r.round for r in restored_records(tmp_path, saved)] == [1, 2]


def test_edited_or_missing_records_are_refused(tmp_path: Path) -> None:
    state = run_state(tmp_path)
    for r in (1, 2):
        state.on_round(record(r), model())
    saved = checkpoint.load(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + lines[1].replace('"accuracy": 0.5', '"accuracy": 0.9'))
    with pytest.raises(CheckpointError, match="are not those its checkpoint was written after"):
        restored_records(tmp_path, saved)
    metrics.write_text(lines[0])
    with pytest.raises(CheckpointError, match="has 1 complete rounds, fewer than the 2"):
        restored_records(tmp_path, saved)
    assert json.loads(lines[0])["round"] == 1
