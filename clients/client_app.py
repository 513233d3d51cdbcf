"""The Flower ClientApp: a thin shell around :func:`clients.training.train_in_mode`.

One ClientApp serves every virtual client. A train message names the phone it trains as
(``fedsim.keys.CLIENT_ID``); the shell fetches that phone's shard, loads the received weights
into a model it keeps alive for the life of the process (no per-call construction), trains, and
replies under the same ArrayRecord name the strategy used. The reply carries the *encoded*
upload (:mod:`clients.updates`: the ``update.kind`` tensors, attacked if the phone is
malicious, compressed) as an ArrayRecord plus a ConfigRecord of codec metadata
(``fedsim.keys.PAYLOAD``), and a MetricRecord with Flower's ``num-examples`` and
``train_loss`` and fedsim's bookkeeping (client id, update kind, payload bytes, ...). The
server's :class:`fedsim.strategy.decode_updates.DecodeUpdates` turns it back into weights.

The shell honours a strategy's train config: FedProx's ``proximal-mu`` and optional
``local-epochs`` / ``batch-size`` / ``lr`` override the run's local recipe for that round. The
server's device simulation (:mod:`fedsim.fleet.device_simulation`) sets the fine-tuning mode,
batch size and chunk it chose for this phone under its memory budget
(``fedsim.keys.FINETUNE_MODE``, ``BATCH_SIZE``, ``CHUNK``: no pass over the whole shard runs
more samples at once), and whether it distills (``fedsim.keys.DISTILL``,
``distill.where=client``): then the phone runs the teacher once over its shard, frees it, and
trains against its logits.

A client algorithm (``env.algorithm``, :mod:`clients.algorithms`; plain SGD by default) works
around the training: it reads the server half's tensors from the message
(:data:`fedsim.keys.ALGORITHM`) and what the phone kept from its last participation
(``env.phone_state``), may correct the gradients, and adds its own tensors, kept state and
metrics to the round (:func:`run_algorithm`).
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from torch import nn

from clients.algorithms.base import LocalAlgorithm, Outcome
from clients.bundles import answer_bundle, answer_summed, sums_partially
from clients.distillation import KDLoss, TeacherOnDevice, logits_of
from clients.finetune import FineTuneMode, Full, mode_named
from clients.local_dp import local_dp_rng, privatize
from clients.partial_sums import Summand
from clients.training import LocalRecipe, LocalResult, train_in_mode
from clients.updates import attacked, encode_upload, full_batch_gradient, payload_tensors
from fedsim import keys
from fedsim.attacks.threat import ThreatModel
from fedsim.bundle_wire import is_bundle
from fedsim.compression.codecs import Encoded
from fedsim.compression.error_feedback import ResidualFiles
from fedsim.compression.phone_files import PhoneFiles
from fedsim.compression.wire import model_record, record_nbytes, to_records
from fedsim.models.state import exchangeable_state, load_cached, load_exchangeable_state
from fedsim.updates import GRADIENT, PLAIN_WEIGHTS, UpdateRule, kind_code, reconstruct

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
    update : UpdateRule
        What the phone uploads and how it is compressed (default: lossless weights).
    threat : ThreatModel or None
        Byzantine behaviour and membership; ``None``: every phone is honest.
    residuals : ResidualFiles or None
        Where error-feedback residuals live; needed when ``update.uses_feedback``.
    scratch_dir : str
        A directory every actor can write (the run directory): fault-injection markers.
    teacher : TeacherOnDevice or None
        The teacher a phone told to distill runs (``distill.where=client``).
    kd : KDLoss
        The distillation loss those phones train with.
    algorithm : LocalAlgorithm
        The client algorithm's phone half (default: plain local SGD).
    phone_state : PhoneFiles or None
        Where each phone's client-algorithm state lives; needed when ``algorithm.stateful``.
    """

    shards: Callable[[int], tuple[np.ndarray, np.ndarray]]
    build_model: Callable[[], nn.Module]
    recipe: LocalRecipe
    seed: int
    threads: int
    update: UpdateRule = PLAIN_WEIGHTS
    threat: ThreatModel | None = None
    residuals: ResidualFiles | None = None
    scratch_dir: str = "."
    teacher: TeacherOnDevice | None = None
    kd: KDLoss = KDLoss()
    algorithm: LocalAlgorithm = LocalAlgorithm()
    phone_state: PhoneFiles | None = None


_MODELS: dict[Hashable, nn.Module] = {}


def _process_model(env: ClientEnvironment) -> nn.Module:
    """The process's long-lived model instance (weights are overwritten on every call)."""
    if env.build_model not in _MODELS:
        torch.set_num_threads(env.threads)
        _MODELS[env.build_model] = env.build_model()
    return _MODELS[env.build_model]


def _process_teacher(teacher: TeacherOnDevice) -> nn.Module:
    """The process's teacher, read once from the server's cache file (it never changes)."""
    if teacher not in _MODELS:
        # Built on whichever phone this process serves first, after that phone's seed: its
        # initialisation must not consume the seeded stream (dropout masks would then depend
        # on Ray's scheduling). The weights are overwritten by the cache file anyway.
        with torch.random.fork_rng(devices=[]):
            model = teacher.builder()
        load_cached(teacher.path, model)
        _MODELS[teacher] = model.eval()
    return _MODELS[teacher]


def teacher_logits(
    env: ClientEnvironment, config: ConfigRecord, x: np.ndarray, chunk: int
) -> torch.Tensor | None:
    """The teacher's logits on the shard, ``chunk`` samples a pass, if told to distill."""
    if not int(config.get(keys.DISTILL, 0)):
        return None
    if env.teacher is None:
        raise RuntimeError("told to distill, but the run has no teacher (distill.where=client)")
    return logits_of(_process_teacher(env.teacher), torch.from_numpy(x), chunk)


def recipe_for_round(base: LocalRecipe, config: ConfigRecord) -> LocalRecipe:
    """The run's recipe with whatever the strategy's train config overrides."""
    overrides = {
        "proximal_mu": keys.PROXIMAL_MU,
        "epochs": keys.LOCAL_EPOCHS,
        "batch_size": keys.BATCH_SIZE,
        "lr": keys.LEARNING_RATE,
        "chunk": keys.CHUNK,
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


def obey_fault(
    env: ClientEnvironment, config: ConfigRecord, server_round: int, client_id: int
) -> dict:
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
        marker = Path(env.scratch_dir) / f"killed-r{server_round}-c{client_id}"
        if marker.exists():
            return {keys.RECOVERED: 1}  # Ray's re-run of the message after the kill
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "w") as fh:
            os.fsync(fh.fileno())
        os._exit(17)  # the Ray actor dies mid-round (faults.kill_actor_at_round)
    return {keys.RECOVERED: 0}  # every reply has the key: Flower aggregates only uniform records


# The records decoded last, with their arrays: the phones of a bundle share one model record
# (and a client algorithm's), so it is parsed once per bundle instead of once per phone.
_DECODED: list[tuple[ArrayRecord, dict[str, np.ndarray]]] = []


def decoded(record: ArrayRecord) -> dict[str, np.ndarray]:
    """``record``'s arrays as numpy, parsed once however many phones of a bundle read it.

    Nothing downstream writes into them (every step builds new arrays), so sharing is safe.
    """
    for seen, arrays in _DECODED:
        if seen is record:
            return arrays
    arrays = {name: array.numpy() for name, array in record.items()}
    _DECODED[:] = [(record, arrays), *_DECODED[:1]]
    return arrays


@dataclass(frozen=True)
class PhoneUpload:
    """What one phone's round produced, before it is framed as a reply (:func:`reply_content`)
    or summed into its slot's partial sum (:mod:`clients.partial_sums`)."""

    arrays_name: str  # the ArrayRecord name the strategy used (the reply uses it too)
    encoded: Encoded  # the compressed upload, exactly what goes on the uplink
    payload_kind: str  # weights | delta | gradient (fedsim.updates)
    metrics: dict  # the reply's MetricRecord
    sent: dict[str, np.ndarray]  # the client algorithm's tensors for its server half
    model: dict[str, np.ndarray]  # the global model as the phone received it


def train_reply(env: ClientEnvironment, message: Message) -> Message:
    """Train as the virtual client named in ``message`` and build the reply."""
    return Message(reply_content(train_phone(env, message)), reply_to=message)


def reply_content(upload: PhoneUpload) -> RecordDict:
    """A phone's reply records: the packed payload and its metadata, the metrics, and the
    client algorithm's tensors if it sent any."""
    payload, meta = to_records(upload.encoded, upload.payload_kind)
    content = RecordDict(
        {upload.arrays_name: payload, keys.PAYLOAD: meta, keys.METRICS: MetricRecord(upload.metrics)}
    )
    if upload.sent:
        content[keys.ALGORITHM] = ArrayRecord(
            {n: Array(np.ascontiguousarray(a)) for n, a in upload.sent.items()}
        )
    return content


def train_phone(env: ClientEnvironment, message: Message) -> PhoneUpload:
    """Train as the virtual client named in ``message``: its upload and metrics."""
    arrays_name, arrays = model_record(message.content)
    config = next(iter(message.content.config_records.values()))
    client_id = int(config[keys.CLIENT_ID])
    server_round = int(config.get(keys.SERVER_ROUND, 0))
    recipe = recipe_for_round(env.recipe, config)
    fresh = env.build_model not in _MODELS
    model = _process_model(env)
    x, y = env.shards(client_id)  # the first call in a process loads the data: not the phone's time
    if fresh:
        # The modules, model and dataset a first call sets up live as long as the actor;
        # frozen, they are skipped by the garbage collections of every later call (a full
        # collection of an actor's heap walks them all: ~0.2 s each time).
        gc.freeze()

    handling = time.perf_counter()  # from here on: what simulation.client_timeout_s limits
    fault_metrics = obey_fault(env, config, server_round, client_id)
    # Deserialize the received model once (once per bundle); torch views share its memory.
    model_arrays = received = decoded(arrays)
    load_exchangeable_state(
        model, {name: torch.from_numpy(a) for name, a in received.items()}, state_views(model)
    )
    attack = env.threat.attacker(client_id) if env.threat else None
    if attack is not None:
        y = attack.flip(y)  # data poisoning happens before training
    seed = local_seed(env.seed, server_round, client_id)
    torch.manual_seed(seed)  # dropout masks
    generator = torch.Generator().manual_seed(seed)

    # The mode and batch the server's memory-budget policy chose for this phone (a gradient
    # upload is full-only: the run refuses any other mode with update.kind=gradient).
    mode = mode_named(
        str(config.get(keys.FINETUNE_MODE, Full.name)),
        cache_features=bool(config.get(keys.CACHE_FEATURES, True)),
    )
    started = time.perf_counter()
    extra, kept = algorithm_inputs(env, message, client_id, server_round)
    correction = env.algorithm.correction(extra, kept, dict(model.named_parameters()))
    gradient = None
    if env.update.kind == GRADIENT:
        step = full_batch_gradient(model, torch.from_numpy(x), torch.from_numpy(y), recipe.chunk)
        gradient = {name: g.numpy() for name, g in step.gradient.items()}
        result = LocalResult(step.mean_loss, step.passes, step.num_examples)
    else:
        soft = teacher_logits(env, config, x, recipe.chunk)  # on the phone: its compute time
        result = train_in_mode(
            model, torch.from_numpy(x), torch.from_numpy(y), recipe, generator, mode, soft, env.kd,
            correction,
        )
    outcome = run_algorithm(env, model, received, extra, kept, result.steps, recipe)
    # Only what the mode changed leaves the phone; the server has the rest (it sent it).
    received = uploaded_part(received, uploaded_names(mode, model))
    state = state_views(model)
    after = {name: state[name].numpy() for name in received}
    after, gradient, privacy_metrics = apply_local_dp(
        env, config, server_round, client_id, received, after, gradient
    )
    payload_kind = env.update.payload_kind
    tensors = payload_tensors(payload_kind, received, after, gradient)
    if attack is not None:  # model poisoning acts on the update, before compression
        tensors = attacked(
            payload_kind, tensors, received, attack, env.threat.rng(server_round, client_id)
        )
    encoded = _encode(env, client_id, server_round, tensors)
    if outcome.kept is not None and env.algorithm.stateful:
        assert env.phone_state is not None, "a stateful client algorithm needs a state store"
        env.phone_state.put(client_id, server_round, outcome.kept)
    compute_s = time.perf_counter() - started

    metrics = {
        keys.NUM_EXAMPLES: result.num_examples,
        keys.TRAIN_LOSS: result.mean_loss,
        keys.CLIENT_ID: client_id,
        keys.TRAIN_STEPS: result.steps,
        keys.COMPUTE_S: compute_s,
        keys.UPDATE_KIND: kind_code(env.update.kind),
        keys.PAYLOAD_BYTES: encoded.nbytes + record_nbytes(outcome.sent),
        **fault_metrics,
        **privacy_metrics,
        **outcome.metrics,
    }
    metrics[keys.HANDLE_S] = time.perf_counter() - handling
    return PhoneUpload(arrays_name, encoded, payload_kind, metrics, outcome.sent, model_arrays)


def summand(env: ClientEnvironment, upload: PhoneUpload) -> Summand:
    """``upload`` as its slot's partial sum takes it: the weights the server would rebuild
    from it (the codec's decoding, then :func:`fedsim.updates.reconstruct`, as
    :class:`fedsim.strategy.decode_updates.DecodeUpdates` does), for the tensors it carries."""
    if upload.sent:  # fedsim.run.checks.check_partial_sums refuses client algorithms
        raise RuntimeError("a client algorithm's tensors cannot go into a partial sum")
    decoded = env.update.compression.decode(upload.encoded)
    received = {name: upload.model[name] for name in decoded}
    weights = reconstruct(
        upload.payload_kind, received, decoded, parameter_names(_process_model(env)),
        env.update.server_lr,
    )
    return Summand(upload.metrics, upload.arrays_name, upload.model, weights)


# Pure functions of the process model's structure, computed once per process instead of once
# per phone: each walks the model's modules (0.2-1.5 ms), against a cross-device phone's
# ~20 ms round. A handful of entries: a process keeps one student (tests build more).
@functools.lru_cache(maxsize=8)
def uploaded_names(mode: FineTuneMode, model: nn.Module) -> frozenset[str]:
    """:meth:`~clients.finetune.base.FineTuneMode.uploaded_names`, once per mode and model."""
    return frozenset(mode.uploaded_names(model))


@functools.lru_cache(maxsize=8)
def state_views(model: nn.Module) -> dict[str, torch.Tensor]:
    """:func:`~fedsim.models.state.exchangeable_state` of the process model, built once: views
    of its tensors, which loading writes into and training updates in place (nothing replaces
    a process model's tensors). Read it, never change the dict."""
    return exchangeable_state(model)


@functools.lru_cache(maxsize=8)
def parameter_names(model: nn.Module) -> frozenset[str]:
    """The student's parameter names (a gradient upload's other tensors are deltas)."""
    return frozenset(name for name, _ in model.named_parameters())


def algorithm_inputs(
    env: ClientEnvironment, message: Message, client_id: int, server_round: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The server half's tensors in ``message`` and what this phone kept (both may be empty)."""
    records = message.content.array_records
    extra = (
        decoded(records[keys.ALGORITHM]) if keys.ALGORITHM in records else {}
    )
    kept = None
    if env.algorithm.stateful:
        assert env.phone_state is not None, "a stateful client algorithm needs a state store"
        kept = env.phone_state.get(client_id, server_round)
    return extra, kept or {}


def run_algorithm(
    env: ClientEnvironment, model: nn.Module, received: dict[str, np.ndarray],
    extra: dict[str, np.ndarray], kept: dict[str, np.ndarray], steps: int, recipe: LocalRecipe,
) -> Outcome:
    """The client algorithm's :meth:`~clients.algorithms.base.LocalAlgorithm.finish` over the
    parameters this round trained (``received``: the model as it arrived)."""
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad and n in received}
    start = {n: received[n] for n in trained}
    end = {n: p.detach().numpy() for n, p in trained.items()}
    return env.algorithm.finish(
        start, end, extra, kept, steps, recipe.lr, recipe.momentum
    )


def uploaded_part(state: dict[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """The entries of ``state`` named in ``names``, in ``state``'s order (the upload's order)."""
    return {name: tensor for name, tensor in state.items() if name in names}


def apply_local_dp(
    env: ClientEnvironment, config: ConfigRecord, server_round: int, client_id: int,
    received: dict[str, np.ndarray], after: dict[str, np.ndarray],
    gradient: dict[str, np.ndarray] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict]:
    """Privatize what the phone will upload when the server asked for local DP.

    ``received`` and ``after`` hold exactly the uploaded tensors, so the clipping norm and the
    noise cover those coordinates and no others (the rest never leave the phone). The trained
    weights become ``received + clip(update) + noise`` (weights and delta kinds); a gradient is
    clipped and noised itself. The reply then weighs 1: a true sample count would
    leak the shard size (see :mod:`clients.local_dp`).
    """
    if keys.LOCAL_DP_CLIPPING_NORM not in config:
        return after, gradient, {}
    clip = float(config[keys.LOCAL_DP_CLIPPING_NORM])
    z = float(config[keys.LOCAL_DP_NOISE_MULTIPLIER])
    rng = local_dp_rng(env.seed, server_round, client_id)
    if gradient is not None:
        zeros = {name: np.zeros_like(g) for name, g in gradient.items()}
        gradient, was_clipped = privatize(zeros, gradient, clip, z, rng)
    else:
        after, was_clipped = privatize(received, after, clip, z, rng)
    return after, gradient, {keys.NUM_EXAMPLES: 1, keys.CLIPPED: int(was_clipped)}


def _encode(
    env: ClientEnvironment, client_id: int, server_round: int, tensors: dict[str, np.ndarray]
) -> Encoded:
    """Compress the upload; with error feedback, through the client's stored residual."""
    if not env.update.uses_feedback:
        return encode_upload(env.update, tensors, None)[0]
    assert env.residuals is not None, "error feedback needs a residual store"
    residual = env.residuals.get(client_id, server_round)
    encoded, residual = encode_upload(env.update, tensors, residual)
    env.residuals.put(client_id, server_round, residual)
    return encoded


def make_client_app(env: ClientEnvironment) -> ClientApp:
    """The ClientApp that runs every virtual client of a simulation."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if is_bundle(message.content):  # several phones, run one after another
            if sums_partially(message):  # simulation.partial_sums: one model for them all
                return answer_summed(message, lambda phone: summand(env, train_phone(env, phone)))
            return answer_bundle(message, lambda phone: train_reply(env, phone))
        return train_reply(env, message)

    return app
