"""The Flower ClientApp: a thin shell around :func:`clients.training.train_locally`.

One ClientApp serves every virtual client. A train message names the phone it trains as
(``fedsim.keys.CLIENT_ID``); the shell fetches that phone's shard, loads the received weights
into a model it keeps alive for the life of the process (no per-call construction), trains, and
replies under the same ArrayRecord name the strategy used plus a MetricRecord carrying
Flower's ``num-examples`` and ``train_loss`` and fedsim's bookkeeping.

The shell honours a strategy's train config: FedProx's ``proximal-mu`` and optional
``local-epochs`` / ``batch-size`` / ``lr`` override the run's local recipe for that round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from clients.privacy import local_dp_rng, privatize
from clients.training import LocalRecipe, train_locally
from fedsim import keys
from fedsim.models.state import exchangeable_state, load_exchangeable_state

# Distinguishes the local-training random stream from every other consumer of the run seed.
_LOCAL_STREAM = 0x10CA1


@dataclass(frozen=True)
class ClientEnvironment:
    """Everything a phone needs, as picklable recipes (shipped to Ray actors on every call).

    Parameters
    ----------
    shards : Callable[[int], tuple[np.ndarray, np.ndarray]]
        Maps a virtual client id to its ``(x, y)`` shard; caches per process.
    build_model : Callable[[], nn.Module]
        Builds the student; hashable, so each process builds it once.
    recipe : LocalRecipe
        The run's local training recipe.
    seed : int
        Run seed; with the round and client id it seeds every local shuffle.
    threads : int
        Torch intra-op threads for this process (the slot's CPU share).
    scratch_dir : str
        A directory every actor can write (the run directory): fault-injection markers.
    """

    shards: Callable[[int], tuple[np.ndarray, np.ndarray]]
    build_model: Callable[[], nn.Module]
    recipe: LocalRecipe
    seed: int
    threads: int
    scratch_dir: str = "."


_MODELS: dict[Hashable, nn.Module] = {}


def _process_model(env: ClientEnvironment) -> nn.Module:
    """The process's long-lived model instance (weights are overwritten on every call)."""
    if env.build_model not in _MODELS:
        torch.set_num_threads(env.threads)
        _MODELS[env.build_model] = env.build_model()
    return _MODELS[env.build_model]


def recipe_for_round(base: LocalRecipe, config: ConfigRecord) -> LocalRecipe:
    """The run's recipe with whatever the strategy's train config overrides."""
    overrides = {
        "proximal_mu": keys.PROXIMAL_MU,
        "epochs": keys.LOCAL_EPOCHS,
        "batch_size": keys.BATCH_SIZE,
        "lr": keys.LEARNING_RATE,
    }
    changes = {
        field: type(getattr(base, field))(config[key])
        for field, key in overrides.items()
        if key in config
    }
    return replace(base, **changes)


def local_seed(seed: int, server_round: int, client_id: int) -> int:
    """A 63-bit seed unique to (run seed, round, client)."""
    state = np.random.SeedSequence([seed, server_round, client_id, _LOCAL_STREAM])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


class InjectedFault(RuntimeError):
    """Raised by a client-round the server told to fail (``faults.client_error_rate``)."""


def obey_fault(env: ClientEnvironment, config: ConfigRecord) -> dict:
    """Act out the fault the server injected into this client-round; return reply metrics.

    A killed actor is restarted by Ray, which re-runs the message; the marker file left before
    dying makes the re-run train normally and report that it recovered.
    """
    fault = config.get(keys.FAULT)
    if fault == "error":
        raise InjectedFault("injected client error (faults.client_error_rate)")
    if fault == "slow":
        time.sleep(float(config[keys.SLOW_FOR_S]))  # overruns simulation.client_timeout_s
    if fault == "kill":
        marker = Path(env.scratch_dir) / (
            f"killed-r{int(config.get(keys.SERVER_ROUND, 0))}-c{int(config[keys.CLIENT_ID])}"
        )
        if marker.exists():
            return {keys.RECOVERED: 1}  # Ray's re-run of the message after the kill
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "w") as fh:
            os.fsync(fh.fileno())
        os._exit(17)  # the Ray actor dies mid-round (faults.kill_actor_at_round)
    return {keys.RECOVERED: 0}  # every reply has the key: Flower aggregates only uniform records


def train_reply(env: ClientEnvironment, message: Message) -> Message:
    """Train as the virtual client named in ``message`` and build the reply."""
    handling = time.perf_counter()
    (arrays_name, arrays), = message.content.array_records.items()
    config = next(iter(message.content.config_records.values()))
    fault_metrics = obey_fault(env, config)
    client_id = int(config[keys.CLIENT_ID])
    server_round = int(config.get(keys.SERVER_ROUND, 0))
    recipe = recipe_for_round(env.recipe, config)

    model = _process_model(env)
    load_exchangeable_state(model, arrays.to_torch_state_dict())
    x, y = env.shards(client_id)
    seed = local_seed(env.seed, server_round, client_id)
    torch.manual_seed(seed)  # dropout masks
    generator = torch.Generator().manual_seed(seed)

    started = time.perf_counter()
    result = train_locally(model, torch.from_numpy(x), torch.from_numpy(y), recipe, generator)
    compute_s = time.perf_counter() - started

    metrics = {
        keys.NUM_EXAMPLES: result.num_examples,
        keys.TRAIN_LOSS: result.mean_loss,
        keys.CLIENT_ID: client_id,
        keys.TRAIN_STEPS: result.steps,
        keys.COMPUTE_S: compute_s,
    }
    state = exchangeable_state(model)
    if keys.LOCAL_DP_CLIPPING_NORM in config:
        state, metrics = apply_local_dp(env, arrays, state, metrics, config, server_round)
    metrics.update(fault_metrics)
    metrics[keys.HANDLE_S] = time.perf_counter() - handling
    content = RecordDict({arrays_name: ArrayRecord(state), keys.METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=message)


def apply_local_dp(
    env: ClientEnvironment, received: ArrayRecord, state: dict[str, torch.Tensor],
    metrics: dict, config: ConfigRecord, server_round: int,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Privatize the update the server asked local DP for; report weight 1 (see clients.privacy)."""
    client_id = int(metrics[keys.CLIENT_ID])
    released, was_clipped = privatize(
        {name: received[name].numpy() for name in state},
        {name: tensor.numpy() for name, tensor in state.items()},
        float(config[keys.LOCAL_DP_CLIPPING_NORM]),
        float(config[keys.LOCAL_DP_NOISE_MULTIPLIER]),
        local_dp_rng(env.seed, server_round, client_id),
    )
    tensors = {name: torch.from_numpy(array) for name, array in released.items()}
    return tensors, {**metrics, keys.NUM_EXAMPLES: 1, keys.CLIPPED: int(was_clipped)}


def make_client_app(env: ClientEnvironment) -> ClientApp:
    """The ClientApp that runs every virtual client of a simulation."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return train_reply(env, message)

    return app
