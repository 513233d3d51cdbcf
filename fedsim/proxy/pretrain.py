"""The server's pre-training of the student on its proxy split, cached on disk.

In deployed on-device learning the server first trains (or distills) the student on data of its
own, ships it, and phones then fine-tune it on their private data; head-only, bias-only
(TinyTL, Cai et al., NeurIPS 2020) and int8-head fine-tuning only make sense from a backbone
that already knows something. fedsim's server data is a stratified *proxy split* of the train
split, held out of every client's shard (:func:`fedsim.data.partition.proxy.proxy_indices`, served
by :meth:`fedsim.data.shards.ShardSource.proxy`).

:class:`Pretraining` is the ``pretrain`` config node. :func:`pretrain_student` is plain
supervised training (the clients' SGD loop, :func:`clients.training.train_locally`);
:func:`pretrained_state` is the thin shell that builds the student, trains it or loads it from
``<cache_dir>/<key>.pt``, and reports. The key (:func:`cache_key`) hashes everything that
determines the weights and nothing else, so runs that differ only in run seed, partition,
strategy or fine-tuning mode share one pre-trained student. The pre-training seed is
``pretrain.seed``, independent of the run seed, for the same reason.

Extending it: subclass :class:`Pretraining` and override :meth:`Pretraining.train`, as
:class:`fedsim.proxy.distillation.DistilledPretraining` does. The subclass's name and fields enter the
cache key on their own (a field declared with ``metadata={"in_key": False}`` stays out), so a
distilled student never collides with a plainly trained one. The teacher
(:mod:`fedsim.proxy.teacher`) is trained and cached by the same code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clients.distillation import KDLoss
from clients.training import LocalRecipe, train_locally
from fedsim.errors import ConfigError
from fedsim.data.splits import ArrayDataset
from fedsim.data.shards import ShardSource
from fedsim.models.factory import ModelBuilder
from fedsim.models.evaluation import evaluate_model
from fedsim.models.batch_statistics import recompute_running_statistics

# Bump when the training procedure changes, so caches of the old procedure stop matching.
# 2: students and teachers train in the channels-last layout (other float rounding).
CACHE_FORMAT = 3  # 3: BatchNorm statistics re-estimated after training
# A field that says where the result is stored, not what it is, is declared with this metadata.
NOT_IN_KEY = {"in_key": False}
_EVAL_BATCH = 500


@dataclass(frozen=True)
class Pretraining:
    """The ``pretrain`` node: the server's proxy split and supervised pre-training on it.

    Parameters
    ----------
    fraction : float
        Share of the train split held out as the proxy split, in ``[0, 1)``; ``0`` turns both
        the proxy split and pre-training off.
    epochs, batch_size, lr, momentum, weight_decay
        SGD on the proxy split.
    max_steps : int or None
        At most this many SGD steps, in whole epochs (at least one): a large proxy split stops
        early instead of running every epoch, a small one is unaffected
        (:meth:`epochs_for`). ``None``: every epoch.
    seed : int
        Seed of the proxy split, the student's initialisation and the shuffles; independent of
        the run seed so that runs with different seeds start from the same student.
    cache_dir : str
        Where pre-trained students are kept (``~`` is expanded).
    client_lr : float
        The phones' learning rate in runs that start here (``simulation.local.lr`` defaults to
        it): fine-tuning a pre-trained student wants a smaller step than training from scratch.
        Not part of the cache key: it does not change the pre-trained weights.
    """

    fraction: float = 0.0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_steps: int | None = None
    seed: int = 0
    cache_dir: str = field(default="~/.cache/fedsim/pretrain", metadata=NOT_IN_KEY)
    client_lr: float = field(default=0.02, metadata=NOT_IN_KEY)

    def __post_init__(self) -> None:
        checks = (
            ("fraction", 0.0 <= self.fraction < 1.0, "must be in [0, 1)"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("momentum", 0.0 <= self.momentum < 1.0, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "must be >= 1 or null"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("cache_dir", bool(str(self.cache_dir).strip()), "must be a directory path"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"pretrain.{name}: {rule}, got {getattr(self, name)!r}")

    def epochs_for(self, samples: int) -> int:
        """Epochs over ``samples`` proxy images: ``epochs``, or fewer whole epochs when they would
        take more than ``max_steps`` steps (never fewer than one).

        >>> recipe = Pretraining(epochs=50, batch_size=16, max_steps=2000)
        >>> recipe.epochs_for(144), recipe.epochs_for(6000), recipe.epochs_for(60000)
        (50, 5, 1)
        """
        if self.max_steps is None:
            return self.epochs
        steps_per_epoch = math.ceil(samples / self.batch_size)
        return max(1, min(self.epochs, self.max_steps // steps_per_epoch))

    @property
    def enabled(self) -> bool:
        """Whether the server holds out a proxy split and pre-trains on it."""
        return self.fraction > 0

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> PretrainReport:
        """Train ``model`` in place on the proxy split: the hook a distilling subclass overrides."""
        return pretrain_student(model, x, y, self)


@dataclass(frozen=True)
class PretrainReport:
    """What one pre-training run did."""

    epochs: int
    samples: int  # size of the proxy split
    seconds: float
    train_loss: float  # sample-weighted mean cross-entropy over all training steps
    train_accuracy: float  # on the proxy split, in eval mode, after training


def cache_key(pretraining: Pretraining, dataset_spec: dict, model_spec: dict) -> str:
    """sha256 (hex) of canonical JSON of everything that determines the pre-trained weights.

    That is the pre-training class and its fields except those declared with
    ``metadata=NOT_IN_KEY`` (``cache_dir``), the dataset node (its train split) and the model spec (architecture, norm, input shape, classes). Dict order does
    not matter (``sort_keys``); the partition, population and run seed are not inputs.
    """
    fields = {
        f.name: getattr(pretraining, f.name)
        for f in dataclasses.fields(pretraining)
        if f.metadata.get("in_key", True)
    }
    kind = f"{type(pretraining).__module__}.{type(pretraining).__qualname__}"
    blob = {
        "format": CACHE_FORMAT,
        "pretrain": {"_target_": kind, **fields},
        "dataset": dataset_spec,
        "model": model_spec,
    }
    canonical = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_spec_of(builder: ModelBuilder) -> dict[str, Any]:
    """The builder's whole recipe as plain data: the norm and input shape shape the weights too."""
    spec = dataclasses.asdict(builder)
    spec["model_spec"] = json.loads(builder.model_spec)
    spec["norm_spec"] = json.loads(builder.norm_spec)
    return spec


def pretrain_student(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pretraining: Pretraining,
    teacher_logits: torch.Tensor | None = None, kd: KDLoss | None = None,
) -> PretrainReport:
    """Supervised SGD on the proxy split, in place; one ``pretraining.seed``, one set of weights.

    With ``teacher_logits`` (a teacher's logits on ``x``) the objective is the distillation
    loss ``kd`` (``clients.distillation``); the reported loss stays the cross-entropy.

    Shuffles come from a generator seeded with ``pretraining.seed``; dropout draws from torch's
    global generator, so that is seeded too, inside ``fork_rng`` so the caller's stream is
    untouched.
    """
    epochs = pretraining.epochs_for(len(y))
    recipe = LocalRecipe(
        epochs=epochs, batch_size=pretraining.batch_size, lr=pretraining.lr,
        momentum=pretraining.momentum, weight_decay=pretraining.weight_decay,
    )
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(pretraining.seed)
        shuffles = torch.Generator().manual_seed(pretraining.seed)
        result = train_locally(model, x, y, recipe, shuffles, teacher_logits, kd)
    recompute_running_statistics(model, x, pretraining.batch_size)
    seconds = time.perf_counter() - started
    accuracy = evaluate_model(model, ArrayDataset(x.numpy(), y.numpy()), _EVAL_BATCH).accuracy
    return PretrainReport(
        epochs=epochs, samples=len(y), seconds=seconds,
        train_loss=result.mean_loss, train_accuracy=accuracy,
    )


def cache_path(pretraining: Pretraining, key: str) -> Path:
    """Where the result of ``key`` is (or will be) cached."""
    return Path(pretraining.cache_dir).expanduser() / f"{key}.pt"


def load_pretrained(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load a state from :func:`pretrained_state` (the whole ``state_dict``, strictly)."""
    model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()})


def _seeded_student(builder: ModelBuilder, seed: int) -> nn.Module:
    """The student's initialisation under ``seed``, leaving the caller's RNG stream as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def _read_cache(path: Path, model: nn.Module) -> dict[str, Any] | None:
    """The cached entry loaded into ``model``, or None if absent or unreadable (then rebuilt)."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(entry["state"])  # strict: a truncated or foreign file fails here
        return dict(entry["report"])
    except Exception as err:  # noqa: BLE001 - any unreadable file is rebuilt, never fatal
        warnings.warn(
            f"pretrain: ignoring corrupt cache {path} ({type(err).__name__}); rebuilding",
            stacklevel=3,
        )
        return None


def _write_cache(path: Path, model: nn.Module, report: PretrainReport) -> None:
    """Write atomically: a run killed mid-write, or two runs racing, never leave a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"state": model.state_dict(), "report": dataclasses.asdict(report)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(entry, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrained_state(
    pretraining: Pretraining,
    builder: ModelBuilder,
    shards: ShardSource,
    test: ArrayDataset | None = None,
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """The pre-trained student's whole state (numpy), from the cache or trained now, and a report.

    Parameters
    ----------
    pretraining : Pretraining
        The ``pretrain`` node; disabled gives ``(None, {"fraction": 0.0})``.
    builder : ModelBuilder
        Builds the student; built under ``torch.manual_seed(pretraining.seed)``.
    shards : ShardSource
        Must hold out this node's proxy split (``proxy_fraction == fraction``,
        ``proxy_seed == seed``).
    test : ArrayDataset or None
        If given, the report includes the pre-trained student's test accuracy.

    Returns
    -------
    tuple
        ``state_dict`` as numpy arrays, BatchNorm buffers included (load it with
        :func:`load_pretrained`), or None; and the ``pretrain`` entry of ``summary.json``:
        fraction, proxy_samples, epochs, cache (``"hit"`` or ``"miss"``), key, seconds (this
        call), train_seconds, train_accuracy and, with ``test``, test_accuracy.
    """
    if not pretraining.enabled:
        return None, {"fraction": 0.0}
    if (shards.proxy_fraction, shards.proxy_seed) != (pretraining.fraction, pretraining.seed):
        raise ValueError(
            f"pretrain: shards hold out fraction {shards.proxy_fraction} seed "
            f"{shards.proxy_seed}, but pretrain has fraction {pretraining.fraction} seed "
            f"{pretraining.seed}"
        )
    started = time.perf_counter()
    key = cache_key(pretraining, json.loads(shards.dataset_spec), model_spec_of(builder))
    path = cache_path(pretraining, key)
    model = _seeded_student(builder, pretraining.seed)
    cached = _read_cache(path, model)
    hit = cached is not None
    if not hit:
        # The init is rebuilt: a failed cache load may have half-overwritten the weights.
        model = _seeded_student(builder, pretraining.seed)
        x, y = shards.proxy()
        trained = pretraining.train(model, torch.from_numpy(x), torch.from_numpy(y))
        _write_cache(path, model, trained)
        cached = dataclasses.asdict(trained)
    report = {
        "fraction": pretraining.fraction,
        "proxy_samples": len(shards.proxy_indices()),
        "epochs": cached["epochs"],  # within pretrain.max_steps
        "cache": "hit" if hit else "miss",
        "key": key,
        "train_seconds": cached["seconds"],
        "train_accuracy": cached["train_accuracy"],
    }
    if test is not None:
        report["test_accuracy"] = evaluate_model(model, test, _EVAL_BATCH).accuracy
    report["seconds"] = time.perf_counter() - started
    state = {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}
    return state, report
