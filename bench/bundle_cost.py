"""Where a bundled phone's time goes, in one process: training, handling, framing and summing.

One 50-phone bundle of the ``cross_device`` workload's phones (digits, 1-2 images a phone, one
SGD step at batch 8, the default student, one thread) answered in-process the way a slot answers
it (:func:`clients.bundles.answer_summed` with partial sums, :func:`clients.bundles.
answer_bundle` without), after one warm-up bundle; 3 repetitions, medians. Per phone:

- ``compute``: the phone's ``fedsim.compute-s`` (training, the mode's bookkeeping, encoding);
- ``handling``: its ``fedsim.handle-s`` (the above plus loading the received model, seeding,
  fault handling): what ``simulation.client_timeout_s`` limits;
- ``outside``: the bundle's wall time per phone minus ``handling``: building the phone's
  message, framing its reply or decoding and adding it to the partial sum, packing the bundle.

No Ray, no server: what a slot spends on each phone, to compare with a phone's training.

Usage: ``python -m bench.bundle_cost``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
PHONES = 50
REPS = 3


def main() -> None:
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity
    from hydra import compose, initialize_config_dir

    from bench.workload import WORKLOADS
    from clients.bundles import answer_bundle, answer_summed
    from clients.client_app import ClientEnvironment, summand, train_phone, train_reply
    from clients.training import LocalRecipe
    from fedsim import keys
    from fedsim.bundle_wire import unpack
    from fedsim.models.state import exchangeable_state
    from fedsim.run.preparation import prepare
    from fedsim.server.bundles import Bundles
    from fedsim.strategy.decode_updates import DecodeUpdates
    from fedsim.strategy.virtual_clients import VirtualClients
    from fedsim.updates import PLAIN_WEIGHTS

    # Flower's Message needs a run id outside its runtime (tests/conftest.py does the same).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    workload = WORKLOADS["cross_device"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            *workload.fedsim_overrides, f"simulation.clients_per_round={PHONES}",
        ])
    prep = prepare(cfg)
    env = ClientEnvironment(
        shards=prep.shards, build_model=prep.builder, seed=0, threads=1, update=PLAIN_WEIGHTS,
        recipe=LocalRecipe(epochs=1, batch_size=workload.batch_size, lr=workload.lr,
                           momentum=workload.momentum),
    )
    torch.manual_seed(0)
    arrays = ArrayRecord(exchangeable_state(prep.builder()))

    class OneSlot(Grid):
        """Just enough of a Grid for the strategy to address one node; nothing is sent."""

        def get_node_ids(self):
            return [1]

        def set_run(self, run): ...
        def create_message(self, *args, **kwargs): ...
        def push_messages(self, messages): ...
        def pull_messages(self, message_ids): ...
        def send_and_receive(self, messages, *, timeout=None): ...
        run = property(lambda self: None)

    def bundle(options: dict):
        wrapper = VirtualClients(DecodeUpdates(FedAvg(), PLAIN_WEIGHTS, frozenset()), prep.sampler)
        messages = list(wrapper.configure_train(1, arrays, ConfigRecord(), OneSlot()))
        message = Bundles.of(messages, [1], lambda m: 1.0, options).messages[0]
        message.metadata.__dict__["_message_id"] = "b"
        return message

    ways = {
        "partial sums": (
            {keys.PARTIAL_SUMS: True},
            lambda m: answer_summed(m, lambda phone: summand(env, train_phone(env, phone))),
        ),
        "bundle": ({}, lambda m: answer_bundle(m, lambda phone: train_reply(env, phone))),
    }
    print(f"| slot answers {PHONES} phones as | per phone | compute | handling | outside |")
    print("|---|---:|---:|---:|---:|")
    for name, (options, answer) in ways.items():
        message = bundle(options)
        answer(message)  # warm-up: the process's model, data and imports
        walls, computes, handles = [], [], []
        for _ in range(REPS):
            started = time.perf_counter()
            reply = answer(message)
            walls.append((time.perf_counter() - started) / PHONES)
            metrics = [e[keys.METRICS] for e in unpack(reply.content)]
            computes.append(statistics.mean(m[keys.COMPUTE_S] for m in metrics))
            handles.append(statistics.mean(m[keys.HANDLE_S] for m in metrics))
        wall, compute, handle = (statistics.median(v) * 1e3 for v in (walls, computes, handles))
        print(f"| {name} | {wall:.1f} ms | {compute:.1f} ms | {handle:.1f} ms | "
              f"{wall - handle:.1f} ms |")


if __name__ == "__main__":
    main()
