"""Checkpoint write time and size per round over 1,000 rounds (docs/reliability.md, "Checkpoints").

    python bench/checkpoint_cost.py /tmp/ckpt [rounds]

Drives the run's :class:`fedsim.run.state.RunState` in-process as the round loop does (append to
``metrics.jsonl``, snapshot, atomic checkpoint write; ``checkpoint_every=1``) with 1,000
synthetic round records, the ``+debug=tiny`` model and FedAdam holding moments ``m_t`` / ``v_t``
shaped like the model; no Ray, no training, so only the checkpoint's cost is measured. To
measure an older fedsim, run this file with ``PYTHONPATH`` set to a checkout of it (``git
worktree add``): it drives the pickle-era ``RunState`` too. Prints one JSON line.
"""
import inspect, json, statistics, sys, time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord
from hydra import compose, initialize_config_dir

import fedsim
from fedsim.models.state import exchangeable_state
from fedsim.report.run_log import RoundRecord
from fedsim.run import state as run_state
from fedsim.run.preparation import prepare

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
conf = Path(fedsim.__file__).resolve().parent.parent / "conf"
with initialize_config_dir(str(conf), version_base="1.3"):
    cfg = compose("config", overrides=["+debug=tiny", "strategy=fedadam", "audit=none"])
prepared = prepare(cfg)
model = prepared.builder()
arrays = ArrayRecord(exchangeable_state(model))
strategy = prepared.strategy
strategy.m_t = {k: np.zeros_like(a.numpy()) for k, a in arrays.items()}
strategy.v_t = {k: np.zeros_like(a.numpy()) for k, a in arrays.items()}
params = sum(a.numpy().size for a in arrays.values())
if "identity" in inspect.signature(run_state.RunState).parameters:  # after
    from fedsim.strategy.saved_state import StackState
    identity = run_state.run_identity(0, prepared.sampler, prepared.privacy)
    state = run_state.RunState(out, StackState(strategy), prepared.privacy, arrays, 1, identity, [])
else:  # before (HEAD)
    state = run_state.RunState(out, strategy, prepared.privacy, arrays, 1, [])
times, sizes = [], {}
for r in range(1, rounds + 1):
    record = RoundRecord(
        round=r, accuracy=0.5 + r * 1e-4, loss=1.2345678, train_loss=1.1234567, sampled=4,
        completed=4, failed=0, clients=[1, 5, 9, 13], num_examples=288, sim_time_s=12.5 * r,
        round_sim_s=12.5, energy_j=3.25, tiers={"mid": {"sampled": 4, "trained": {"full": 4}}},
        wall_s=1.0, elapsed_wall_s=float(r), client_wall_s=2.0, bytes_up=100000, bytes_down=100000,
    )
    start = time.perf_counter()
    state.on_round(record, arrays)
    times.append(time.perf_counter() - start)
    if r in (1, 10, 100, 1000) or r == rounds:
        sizes[r] = state.path.stat().st_size
ms = lambda xs: round(1000 * statistics.mean(xs), 2)
print(json.dumps({
    "file": state.path.name, "params": int(params), "rounds": rounds,
    "write_ms_rounds_1_10": ms(times[:10]), "write_ms_rounds_491_500": ms(times[490:500] or times),
    "write_ms_rounds_991_1000": ms(times[-10:]), "write_ms_mean": ms(times),
    "size_bytes": sizes,
}))
