"""The teacher: a larger network the server trains on its proxy split, cached on disk.

Knowledge distillation (``distill.where``, :mod:`fedsim.proxy.distillation`) needs a teacher that
knows more than the student. fedsim's teacher is whatever network the ``teacher`` config group
names (``conf/teacher``: a CIFAR ResNet-20, He et al. 2016, by default; MobileNetV2 at width
1.0), trained with plain supervised SGD on the server's proxy split, the stratified share of
the train split held out of every phone's shard (:mod:`fedsim.proxy.pretrain`). It is trained, cached
and reloaded by :func:`fedsim.proxy.pretrain.pretrained_state`, so its cache key covers its
architecture, its recipe, the proxy split and the dataset, and a second run with the same
teacher reuses it (``summary.json["distill"]["teacher"]["cache"] == "hit"``).

:class:`Teacher` is the config node; :func:`trained_teacher` is the thin shell that returns the
trained network and its report (accuracy and size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fedsim.errors import ConfigError
from clients.distillation import TeacherOnDevice
from fedsim.data.splits import ArrayDataset
from fedsim.data.shards import ShardSource
from fedsim.models.factory import ModelBuilder
from fedsim.fleet.model_size import model_size
from fedsim.proxy.pretrain import NOT_IN_KEY, Pretraining, cache_path, load_pretrained, pretrained_state


@dataclass(frozen=True)
class Teacher:
    """The ``teacher`` node: the network and how the server trains it on the proxy split.

    Parameters
    ----------
    model : dict
        Hydra node of the network (``_target_`` and its arguments), built like the student's
        ``model`` node with the dataset's shape and class count.
    norm : dict
        Hydra node of its norm factory (``_target_``, ``_partial_``).
    epochs, batch_size, lr, momentum, weight_decay
        SGD on the proxy split (its seed is the proxy split's, ``pretrain.seed``).
    max_steps : int or None
        At most this many SGD steps, in whole epochs, as ``pretrain.max_steps``
        (:meth:`~fedsim.proxy.pretrain.Pretraining.epochs_for`). ``None``: every epoch.
    cache_dir : str
        Where trained teachers are kept (``~`` is expanded).
    """

    model: dict
    norm: dict
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_steps: int | None = None
    cache_dir: str = field(default="~/.cache/fedsim/teacher", metadata=NOT_IN_KEY)

    def __post_init__(self) -> None:
        for name in ("model", "norm"):
            node = getattr(self, name)
            if not isinstance(node, dict) or not node.get("_target_"):
                raise ConfigError(f"teacher.{name}: needs a _target_, got {node!r}")
        # The recipe's own checks (epochs >= 1, lr > 0, ...) name the teacher's fields.
        try:
            self.training(fraction=0.5, seed=0)
        except ConfigError as err:
            raise ConfigError(str(err).replace("pretrain.", "teacher.", 1)) from None

    def builder(self, input_shape: tuple[int, int, int], num_classes: int) -> ModelBuilder:
        """Builds the teacher for the dataset's shape."""
        return ModelBuilder.from_config(dict(self.model), dict(self.norm), input_shape, num_classes)

    def training(self, fraction: float, seed: int) -> Pretraining:
        """The teacher's recipe on the proxy split of ``fraction`` drawn with ``seed``."""
        return Pretraining(
            fraction=fraction, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, max_steps=self.max_steps,
            seed=seed, cache_dir=self.cache_dir,
        )

    @property
    def name(self) -> str:
        """The network's builder, e.g. ``resnet``."""
        return str(self.model["_target_"]).rsplit(".", 1)[-1]


def trained_teacher(
    teacher: Teacher, shards: ShardSource, input_shape: tuple[int, int, int],
    num_classes: int, test: ArrayDataset | None = None,
) -> tuple[nn.Module, dict[str, Any], TeacherOnDevice]:
    """The teacher trained on ``shards``' proxy split (or loaded from the cache), and a report.

    Returns
    -------
    tuple
        The network (eval mode); the ``teacher`` entry of ``summary.json["distill"]``: its
        builder, cache (``"hit"``/``"miss"``), key, epochs, train and test accuracy and its size
        (:func:`fedsim.fleet.model_size.model_size`); and its :class:`TeacherOnDevice` recipe.
    """
    builder = teacher.builder(input_shape, num_classes)
    training = teacher.training(shards.proxy_fraction, shards.proxy_seed)
    state, report = pretrained_state(training, builder, shards, test)
    model = builder()
    load_pretrained(model, state)
    model.eval()
    entry = {
        "model": teacher.name,
        "cache": report["cache"],
        "key": report["key"],
        "epochs": report["epochs"],  # those run: max_steps may stop a large proxy split early
        "proxy_samples": report["proxy_samples"],
        "train_accuracy": report["train_accuracy"],
        **({"test_accuracy": report["test_accuracy"]} if "test_accuracy" in report else {}),
        **model_size(model, input_shape),
    }
    path = Path(cache_path(training, report["key"]))
    return model, entry, TeacherOnDevice(builder, str(path))
