"""Compute of on-device training: forward and backward FLOPs per fine-tuning mode.

This module owns the cost model that turns a model, an input shape and a fine-tuning mode
(``clients.finetune``) into floating-point operations, for a device's time-to-train. It is a
pure function of shapes: ops are read off ``fedsim.fleet.trace.trace_training_forward``.

Conventions (one multiply-add is 2 FLOPs, as in most of the on-device literature; papers that
quote "FLOPs" for MACs, e.g. the MobileNet papers' "MAdds", are half of ours):

- conv2d: ``2 * (C_in / groups) * k_h * k_w * C_out * H_out * W_out`` per sample;
  linear: ``2 * in * out``. Bias additions are not counted (at most one FLOP per output
  against ``2 * C_in / groups * k^2``, and the MobileNets' convs have no bias).
- batch / group norm: ``NORM_FLOPS`` per element (normalise and scale-and-shift; the
  statistics' reductions are not counted); activations, dropout, residual adds and the
  squeeze-excite product: ``ELEMENTWISE_FLOPS`` per output element; pooling: one per input
  element; views and flattening: none. These are a few percent of a MobileNet's total.
  Concatenations and channel shuffles (ShuffleNetV2, GhostNet, SqueezeNet) count none either.
- backward: for each op, the gradient w.r.t. its input costs what the forward did, and is
  computed only where a gradient must flow further back (the input needs one); the gradient
  w.r.t. its weight costs what the forward did, and is computed only if the weight trains.
  For a conv both are convolutions with the forward's multiply-add count. So a fully trained
  conv stack costs about 2x its forward in backward (the first layer needs no input
  gradient), and head-only training has the classifier's backward only [1]_.
- the loss is not counted (a few FLOPs per class).
- a ``fake_quantized`` mode, ``qat`` (``train_cost``): full training plus, per conv / linear
  output element, ``FAKE_QUANT_FLOPS`` for fake-quantising it and ``ELEMENTWISE_FLOPS`` for
  its straight-through mask in backward. The weights' fake quantisation (the same per weight, per
  *step*) is left out, as ``train_cost`` has no batch size: at batch 8 on 8x8 digits it would
  add about 10 % to MobileNetV2's forward. The EMA observers' min / max reductions are not
  counted, like BatchNorm's statistics.
- an ``int8_backbone`` mode, ``int8_head``: the backbone forward runs on the int8 kernels
  (``TrainCost.int8_flops``); the pooling after it and the head train in fp32.

References
----------
.. [1] Cai, Gan, Zhu, Han, "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
   Learning", NeurIPS 2020. https://arxiv.org/abs/2007.11622
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from clients.finetune import FineTuneMode, Full
from clients.quantize import QUANTIZED_OPS
from fedsim.fleet.trace import OpCall, TensorInfo, trace_training_forward

NORM_FLOPS = 4  # per element: subtract mean, times inverse std, times weight, plus bias
AFFINE_GRAD_FLOPS = 2  # per element: grad * x_hat accumulated into the weight gradient
ELEMENTWISE_FLOPS = 1  # per output element of an activation, dropout, add or product
FAKE_QUANT_FLOPS = 4  # per element: divide by scale, round, clamp, multiply back
ELEMENTWISE_OPS = frozenset(
    {"relu", "hardtanh", "hardswish", "hardsigmoid", "dropout", "mul", "add"}
)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward and one backward pass over a batch."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def op_flops(call: OpCall) -> FlopCount:
    """Forward and backward FLOPs of one traced op (see the module docstring's conventions)."""
    a, out = call.args, call.out
    x = a.get("input")
    if not isinstance(x, TensorInfo):
        return FlopCount(0, 0)
    out_elems = math.prod(out.shape)
    forward = input_grad = weight_grad = 0
    if call.op in ("conv2d", "linear"):
        weight = a["weight"]
        # Multiply-adds per output element: C_in / groups * k * k for a conv, `in` for linear.
        forward = 2 * math.prod(weight.shape[1:]) * out_elems
        input_grad = forward if x.needs_grad else 0
        weight_grad = forward if weight.needs_grad else 0
    elif call.op in ("batch_norm", "group_norm"):
        forward = NORM_FLOPS * out_elems
        input_grad = forward if x.needs_grad else 0
        weight = a.get("weight")
        weight_grad = (
            AFFINE_GRAD_FLOPS * out_elems if weight is not None and weight.needs_grad else 0
        )
    elif call.op in ELEMENTWISE_OPS:
        forward = ELEMENTWISE_FLOPS * out_elems
        operands = [
            v for k, v in a.items() if k in ("input", "other") and isinstance(v, TensorInfo)
        ]
        input_grad = forward * sum(t.needs_grad for t in operands)
    elif call.op == "adaptive_avg_pool2d":
        forward = math.prod(x.shape)
        input_grad = forward if x.needs_grad else 0
    elif call.op == "max_pool2d":  # one comparison per input element, one scatter back
        forward = math.prod(x.shape)
        input_grad = forward if x.needs_grad else 0
    return FlopCount(forward, input_grad + weight_grad)


def count_flops(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mode: FineTuneMode = Full(),
    batch: int = 1,
) -> FlopCount:
    """FLOPs of one training forward and backward of ``model`` in ``mode``.

    Parameters
    ----------
    model : nn.Module
        The model; not modified.
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    mode : FineTuneMode
        Decides which backward terms exist (``full``, ``head``, ``bias``).
    batch : int
        Samples in the pass; every count is linear in it.

    Returns
    -------
    FlopCount
        ``forward`` is the same in every mode; ``backward`` is what ``mode`` needs.
    """
    counts = [op_flops(call) for call in trace_training_forward(model, input_shape, batch, mode)]
    return FlopCount(sum(c.forward for c in counts), sum(c.backward for c in counts))


def train_flops(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mode: FineTuneMode,
    samples: int,
    epochs: int,
    cache_frozen_prefix: bool = False,
) -> int:
    """FLOPs of ``epochs`` passes of training over ``samples`` samples in ``mode``.

    Freezing the backbone removes its backward but not its forward, so uncached head-only
    training still costs about a third of full training. Since a frozen backbone in eval mode
    is a fixed function, a client may instead run it once per sample and cache its features
    (linear probing): then only the trainable suffix runs every epoch.

    Parameters
    ----------
    model : nn.Module
        The model; not modified.
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    mode : FineTuneMode
        Fine-tuning mode.
    samples : int
        Samples on the client.
    epochs : int
        Local epochs.
    cache_frozen_prefix : bool
        Run the ops no trainable parameter feeds (the frozen prefix) once per sample rather
        than every epoch. Valid only if that prefix is deterministic (eval mode, no data
        augmentation); ``clients.training.train_locally`` does not cache, hence the default;
        ``train_cost`` caches where the mode does (``mode.caches_features``).

    Returns
    -------
    int
        Total FLOPs.
    """
    calls = trace_training_forward(model, input_shape, 1, mode)
    per_epoch = once = 0
    for call in calls:
        flops = op_flops(call)
        # Dropout is random, so its output is not reused even where no parameter feeds it.
        if cache_frozen_prefix and not call.out.needs_grad and call.op != "dropout":
            once += flops.forward  # frozen: no backward, and the forward is reused
        else:
            per_epoch += flops.total
    return samples * (once + epochs * per_epoch)


@dataclass(frozen=True)
class TrainCost:
    """FLOPs of one client-round, split by the arithmetic that runs them.

    A device's compute time is ``fp32_flops / fp32 throughput + int8_flops / int8 throughput``.
    """

    fp32_flops: int
    int8_flops: int


def fake_quant_flops(calls: list[OpCall]) -> int:
    """Forward and backward FLOPs of QAT's output fake quantisation over traced ``calls``."""
    return sum(
        (FAKE_QUANT_FLOPS + ELEMENTWISE_FLOPS) * math.prod(call.out.shape)
        for call in calls
        if call.op in QUANTIZED_OPS
    )


def train_cost(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mode: FineTuneMode,
    samples: int,
    epochs: int,
) -> TrainCost:
    """Training FLOPs of a client-round in ``mode``, fp32 and int8 (module docstring conventions).

    Parameters
    ----------
    model : nn.Module
        A ``FeaturesClassifier`` (``int8_head`` needs its ``features``); not modified.
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    mode : FineTuneMode
        ``train_flops`` in ``mode``, the frozen backbone's forward run once per sample where
        ``mode.caches_features`` (``head`` and ``int8_head`` with ``cache_features``, as
        ``clients.training.train_in_mode`` runs them) and every epoch otherwise. A
        ``fake_quantized`` mode (``qat``) adds ``fake_quant_flops``, all fp32; an
        ``int8_backbone`` mode (``int8_head``) moves the backbone's forward to ``int8_flops``.
    samples : int
        Samples on the client.
    epochs : int
        Local epochs.

    Returns
    -------
    TrainCost
        E.g. ``head`` cached: ``samples * (backbone_forward + epochs * head_total)``, all fp32.
    """
    fp32 = train_flops(
        model, input_shape, mode, samples, epochs, cache_frozen_prefix=mode.caches_features
    )
    if mode.fake_quantized:
        calls = trace_training_forward(model, input_shape, 1, mode)
        fp32 += samples * epochs * fake_quant_flops(calls)
    if not mode.int8_backbone:
        return TrainCost(fp32, 0)
    backbone_passes = samples * (1 if mode.cache_features else epochs)
    int8 = backbone_passes * count_flops(model.features, input_shape, Full()).forward
    return TrainCost(fp32 - int8, int8)
