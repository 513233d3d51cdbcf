"""Memory of a whole client-round: every stage a phone runs, and the peak over them.

A phone's round is more than one training step (:func:`fedsim.fleet.memory.estimate_train_memory`).
Before it trains it may run the teacher over its shard (``distill.where=client``), calibrate an
int8 copy of its backbone (``int8_head``) and compute the frozen backbone's features
(``head``, ``int8_head``); ``update.kind=gradient`` replaces training by one full-batch
gradient. Those passes go over the whole shard, ``chunk`` samples at a time (at most
:data:`clients.finetune.PASS_CHUNK`), and cost memory in proportion to ``chunk``, not to the
training batch: at ``chunk=256`` head mode's feature pass needs ten times its training step.
So the server admits a phone at a batch *and* a chunk (:mod:`fedsim.fleet.budget`), tells it
both, and the phone runs no pass larger than that (``clients.training.LocalRecipe.chunk``).

Each stage holds some bytes throughout (``held``: weights, gradients, optimizer state, and
what earlier stages left for later ones: cached features, teacher logits) and needs some for
its pass (``working``: the larger of the activations saved for backward and the no-grad
working set, as in :class:`~fedsim.fleet.memory.MemoryEstimate`). A stage runs at
``min(size, shard)`` samples. The round's peak is the largest stage total; stages run one after
another, so their passes never add up. The stages, in the order a phone runs them:

- ``teacher`` (distilling phones): the received student's fp32 weights, the teacher's state and
  its no-grad working set (:func:`~fedsim.fleet.memory.estimate_inference_memory`) at
  ``chunk``, and the shard's logits (``N x classes`` fp32) it fills.
- ``calibration`` (``int8_head``): the float student and the float copy of its backbone being
  calibrated, with the fp32 backbone's working set at ``min(CALIBRATION_BATCH, chunk)``.
- ``features`` (a frozen backbone whose features are computed over the shard): the mode's
  weights (the int8 backbone for ``int8_head``), the ``N x C`` fp32 features being filled, and
  the backbone's no-grad working set at ``chunk``.
- ``gradient`` (``update.kind=gradient``): a ``full`` step at ``chunk`` without momentum.
- ``train``: the step at ``batch`` (plus Hinton's loss's two saved ``B x classes`` tensors when
  distilling), with what earlier stages left held: the features when the step runs on them
  (then its working set is the classifier's alone) and the teacher's logits, and a client
  algorithm's copies of the trained parameters (SCAFFOLD's ``c`` and ``c_i``: two fp32 copies,
  ``held_copies x`` the step's gradient bytes).

Left out, all small beside these stages for the MobileNets: the observers' histograms during
calibration, FedProx's anchor copy of the trained weights, and the encoding of the upload.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from torch import nn

from clients.finetune import Full, FineTuneMode
from clients.quantize import CALIBRATION_BATCH
from fedsim.fleet.memory import (
    FP32_BYTES,
    MemoryEstimate,
    estimate_inference_memory,
    estimate_train_memory,
    working_set,
)
from fedsim.fleet.trace import trace_training_forward


@dataclass(frozen=True)
class Stage:
    """One stage of a client-round: what it holds throughout and what its pass needs, bytes."""

    name: str  # teacher | calibration | features | gradient | train
    samples: int  # per pass
    held: int
    working: int

    @property
    def total(self) -> int:
        return self.held + self.working


@dataclass(frozen=True)
class RoundMemory:
    """The stages of one client-round, in the order the phone runs them."""

    stages: tuple[Stage, ...]

    @property
    def peak(self) -> int:
        """Bytes the round needs: its largest stage (stages run one after another)."""
        return max(stage.total for stage in self.stages)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        return next(s for s in self.stages if s.name == name)


def kd_saved_bytes(batch: int, classes: int) -> int:
    """What Hinton's loss saves beyond cross-entropy: two ``(B, classes)`` fp32 tensors.

    The tempered student's log-probabilities and the teacher's probabilities that the KL
    divergence multiplies (checked with saved-tensor hooks; ``clients.distillation.kd_loss``).
    """
    return 2 * batch * classes * FP32_BYTES


class ClientRoundMemory:
    """Estimates whole client-rounds of one student (and teacher), from shapes alone.

    A thin cache around the pure estimates: each pass's shape trace depends only on the mode
    and the pass size, so it is traced once and reused for every phone and shard size.

    Parameters
    ----------
    model : nn.Module
        The student, a ``FeaturesClassifier`` (never trained or modified here).
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    teacher : nn.Module or None
        The teacher distilling phones run over their shard.
    momentum : bool
        Whether local SGD keeps a momentum buffer.
    held_copies : int
        fp32 copies of the trained parameters a client algorithm holds while training.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, int, int],
        teacher: nn.Module | None = None, momentum: bool = True, held_copies: int = 0,
    ) -> None:
        self.model = model
        self.held_copies = held_copies
        self.input_shape = input_shape
        self.teacher = teacher
        self.momentum = momentum
        self._steps: dict[tuple[FineTuneMode, int, bool], MemoryEstimate] = {}
        self._teacher: dict[int, int] = {}
        self._backbone: dict[int, int] = {}
        self._classifier: dict[int, int] = {}
        self.fp32_weights = sum(p.numel() for p in model.parameters()) * FP32_BYTES

    @functools.cached_property
    def classes(self) -> int:
        """Logits per sample."""
        return trace_training_forward(self.model, self.input_shape, 1, Full())[-1].out.shape[1]

    @functools.cached_property
    def feature_channels(self) -> int:
        """``C`` of the backbone's pooled features (a ``FeaturesClassifier``'s head input)."""
        calls = trace_training_forward(self.model.features, self.input_shape, 1, Full())
        return calls[-1].out.shape[1]

    @functools.cached_property
    def backbone_state(self) -> int:
        """Bytes of the float backbone's parameters and buffers (the copy PTQ calibrates)."""
        return sum(t.numel() * t.element_size() for t in self.model.features.state_dict().values())

    # --- cached shape traces, one per pass size ------------------------------------------------

    def step(self, mode: FineTuneMode, batch: int, momentum: bool | None = None) -> MemoryEstimate:
        """:func:`~fedsim.fleet.memory.estimate_train_memory` of ``mode`` at ``batch`` (cached)."""
        momentum = self.momentum if momentum is None else momentum
        key = (mode, batch, momentum)
        if key not in self._steps:
            self._steps[key] = estimate_train_memory(
                self.model, self.input_shape, batch, mode, momentum=momentum
            )
        return self._steps[key]

    def teacher_pass(self, samples: int) -> int:
        """The teacher's state plus its no-grad working set at ``samples`` (cached)."""
        assert self.teacher is not None
        if samples not in self._teacher:
            self._teacher[samples] = estimate_inference_memory(
                self.teacher, self.input_shape, samples
            )
        return self._teacher[samples]

    def backbone_pass(self, samples: int) -> int:
        """The fp32 backbone's largest no-grad working set at ``samples`` (cached)."""
        if samples not in self._backbone:
            calls = trace_training_forward(self.model.features, self.input_shape, samples, Full())
            self._backbone[samples] = max(working_set(call) for call in calls)
        return self._backbone[samples]

    def classifier_pass(self, samples: int) -> int:
        """The classifier's largest working set on ``samples`` cached features (cached)."""
        if samples not in self._classifier:
            calls = trace_training_forward(
                self.model.classifier, (self.feature_channels,), samples, Full()
            )
            self._classifier[samples] = max(working_set(call) for call in calls)
        return self._classifier[samples]

    # --- the round ------------------------------------------------------------------------------

    def estimate(
        self, mode: FineTuneMode, batch: int, chunk: int, samples: int,
        gradient: bool = False, distill: bool = False,
    ) -> RoundMemory:
        """The stages of a client-round (see the module docstring) and so its peak.

        Parameters
        ----------
        mode : FineTuneMode
            What the phone trains (``gradient`` rounds are ``full``).
        batch, chunk : int
            Samples per training step, and at most per pass over the whole shard.
        samples : int
            The phone's shard size ``N``.
        gradient : bool
            ``update.kind=gradient``: one full-batch gradient instead of local training.
        distill : bool
            The phone runs the teacher over its shard first and trains against its logits.
        """
        n = max(samples, 1)
        logits = n * self.classes * FP32_BYTES if distill else 0
        stages = []
        if distill:
            size = min(chunk, n)
            held = self.fp32_weights + logits
            stages.append(Stage("teacher", size, held, self.teacher_pass(size)))
        if gradient:
            size = min(chunk, n)
            step = self.step(Full(), size, momentum=False)
            return RoundMemory((*stages, Stage("gradient", size, _state(step), _working(step))))
        if mode.int8_backbone:
            size = min(CALIBRATION_BATCH, chunk, n)
            held = self.fp32_weights + self.backbone_state
            stages.append(Stage("calibration", size, held, self.backbone_pass(size)))
        size = min(batch, n)
        step = self.step(mode, size)
        kd = kd_saved_bytes(size, self.classes) if distill else 0
        # The step's gradients are fp32, one per trained parameter: the size of each copy.
        algorithm = self.held_copies * step.gradients
        if mode.int8_backbone or mode.caches_features:
            # The classifier trains on the features: the backbone runs only in their pass. (Only
            # here: a user model without the features/classifier seam trains `full`.)
            features = n * self.feature_channels * FP32_BYTES
            pass_size = min(chunk, n)
            feature_pass = self.step(mode, pass_size).forward_peak
            stages.append(Stage("features", pass_size, step.weights + features, feature_pass))
            working = max(step.activations + kd, self.classifier_pass(size))
            held = _state(step) + features + logits + algorithm
            stages.append(Stage("train", size, held, working))
        else:
            working = max(step.activations + kd, step.forward_peak)
            stages.append(Stage("train", size, _state(step) + logits + algorithm, working))
        return RoundMemory(tuple(stages))


def _state(step: MemoryEstimate) -> int:
    """Weights, gradients and optimizer state: held while the step runs."""
    return step.weights + step.gradients + step.optimizer_state


def _working(step: MemoryEstimate) -> int:
    """The step's own bytes: the larger of its saved activations and its forward working set."""
    return max(step.activations, step.forward_peak)
