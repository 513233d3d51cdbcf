"""Int8 on the phone: fake-quantised training (QAT) and a post-training-quantised backbone.

This module owns the two quantised fine-tuning modes of ``clients.finetune``:

- ``qat``: every ``Conv2d`` / ``Linear`` computes with int8 fake-quantised weights (per output
  channel, symmetric) and fake-quantises its output (per tensor, affine, range tracked by an
  exponential moving average), as in [1]_ and [2]_. ``torch.fake_quantize_*`` ops round in the
  forward and pass the gradient straight through (zero outside the clamping range) in the
  backward. ``FakeQuantMode`` does this by intercepting the ``conv2d`` / ``linear`` calls of a
  forward (a ``TorchFunctionMode``) instead of swapping modules or parametrising weights: the
  model's modules, parameter names and ``state_dict`` never change, and leaving the ``with``
  block leaves a plain float model to send back. BatchNorm is not folded into the conv weights
  before quantising ([2]_ section 3.2 folds it): folding would need the fused module swap this
  design avoids, and the float model the server receives keeps its BatchNorm anyway.
- ``int8_head``: ``quantize_backbone`` turns a copy of ``model.features`` into a real int8
  network (``torch.ao.quantization.quantize_fx``, conv + BatchNorm fused, per-channel int8
  weights, uint8 activations calibrated on the client's own images) running the quantised CPU
  kernels of ``torch.backends.quantized.engine`` (``x86`` here, ``qnnpack`` on ARM phones).
  Both students (MobileNetV2, MobileNetV3-Small, BatchNorm or GroupNorm) convert; GroupNorm has
  no int8 kernel and runs in float between a dequantise and a quantise.

The pure helpers (``affine_qparams``, ``symmetric_scales``, ``ema_range``) are the maths of
[1]_ section 2 and [2]_ section 2; ``int8_weight_bytes`` is the storage accounting of the int8
backbone that ``fedsim.fleet.memory`` measures.

References
----------
.. [1] Jacob et al., "Quantization and Training of Neural Networks for Efficient
   Integer-Arithmetic-Only Inference", CVPR 2018. https://arxiv.org/abs/1712.05877
.. [2] Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A
   whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

ACT_QMIN, ACT_QMAX = 0, 255  # uint8 activations, affine
WEIGHT_QMAX = 127  # int8 weights in the symmetric "restricted" range [-127, 127] ([2]_ 2.2)
EMA_CONSTANT = 0.01  # weight of a new batch's min/max in the running range (as torch's observer)
QUANTIZED_OPS = ("conv2d", "linear")
# Bytes an int8 runtime stores per output channel besides the int8 weights: an fp32 scale and
# an int32 zero point (torch keeps them as float64 / int64 in the packed tensor; a phone does not).
CHANNEL_QPARAM_BYTES = 4 + 4
CALIBRATION_BATCH = 64  # samples per calibration pass, at most (a phone short of RAM runs fewer)


def affine_qparams(
    min_val: float, max_val: float, qmin: int = ACT_QMIN, qmax: int = ACT_QMAX
) -> tuple[float, int]:
    """Scale and zero point mapping ``[min_val, max_val]`` onto the integers ``[qmin, qmax]``.

    ``x ~ scale * (q - zero_point)`` ([1]_ eq. 1). The range is first widened to contain 0, so
    that zero (padding, ReLU outputs) is exact; the zero point is the rounded integer that
    represents 0 ([1]_ section 2.1, [2]_ eq. 2). Every ``x`` in the range then rounds to within
    ``scale / 2``.

    Examples
    --------
    >>> affine_qparams(-1.0, 1.55)  # 2.55 / 255 = 0.01; 0 is 100 steps above -1.0
    (0.01, 100)
    """
    min_val, max_val = min(min_val, 0.0), max(max_val, 0.0)
    scale = max((max_val - min_val) / (qmax - qmin), torch.finfo(torch.float32).eps)
    zero_point = int(min(max(round(qmin - min_val / scale), qmin), qmax))
    return scale, zero_point


def symmetric_scales(weight: Tensor, qmax: int = WEIGHT_QMAX) -> Tensor:
    """Per-output-channel scales of symmetric int8 weight quantisation, ``max |w| / qmax``.

    One scale per slice along dimension 0 (a conv's output channels, a linear's rows), zero
    point 0 ([2]_ section 2.2 and 3.1: per-channel weights lose far less accuracy than one
    scale per tensor, notably in depthwise convs). Floored at fp32 ``eps`` for all-zero rows.
    """
    amax = weight.detach().abs().flatten(1).amax(dim=1)  # (C_out,)
    return (amax / qmax).clamp_min(torch.finfo(torch.float32).eps)


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """Round ``weight`` to per-channel symmetric int8 and back; straight-through gradient."""
    scales = symmetric_scales(weight)
    zero_points = torch.zeros_like(scales, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(
        weight, scales, zero_points, 0, -WEIGHT_QMAX, WEIGHT_QMAX
    )


def fake_quantize_activation(x: Tensor, min_val: float, max_val: float) -> Tensor:
    """Round ``x`` to per-tensor affine uint8 over ``[min_val, max_val]`` and back ([1]_ eq. 1).

    Values outside the range are clamped and get a zero gradient; inside, the gradient passes
    straight through ([1]_ section 3).
    """
    scale, zero_point = affine_qparams(min_val, max_val)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)


def ema_range(
    running: tuple[float, float] | None, batch_min: float, batch_max: float,
    constant: float = EMA_CONSTANT,
) -> tuple[float, float]:
    """Update a running activation range with one batch's min and max ([1]_ section 3.1).

    The first batch sets the range; later ones move it by ``constant`` of the difference, so
    one outlier batch does not blow up the quantisation step of every later one.
    """
    if running is None:
        return batch_min, batch_max
    lo, hi = running
    return lo + constant * (batch_min - lo), hi + constant * (batch_max - hi)


class FakeQuantMode(TorchFunctionMode):
    """While active, ``model``'s convs and linears run with int8 fake-quantised weights and outputs.

    Use as ``with FakeQuantMode(model): ...``. Only calls whose weight is a ``Conv2d`` /
    ``Linear`` weight of ``model`` are changed; everything else (the loss, the optimiser, other
    models) runs as usual. Output ranges (``ranges``, keyed by module name) update by
    ``ema_range`` while ``observe`` is true, then are used as they stand (set it false to
    evaluate). Nothing is attached to ``model``: leaving the block leaves it as it was, with
    whatever float weights training produced.
    """

    def __init__(self, model: nn.Module, observe: bool = True) -> None:
        super().__init__()
        self.observe = observe
        self.ranges: dict[str, tuple[float, float]] = {}
        self._layers = {
            id(m.weight): name
            for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        }

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        layer = self._layers.get(id(weight)) if name in QUANTIZED_OPS else None
        if layer is None:
            return func(*args, **kwargs)
        args = (args[0], fake_quantize_weight(weight), *args[2:]) if len(args) > 1 else args
        if "weight" in kwargs:
            kwargs = kwargs | {"weight": fake_quantize_weight(weight)}
        out = func(*args, **kwargs)
        if self.observe or layer not in self.ranges:
            lo, hi = torch.aminmax(out.detach())
            self.ranges[layer] = ema_range(self.ranges.get(layer), lo.item(), hi.item())
        return fake_quantize_activation(out, *self.ranges[layer])


def quantize_backbone(
    backbone: nn.Module, calibration: Tensor, batch_size: int = CALIBRATION_BATCH
) -> nn.Module:
    """A post-training-quantised int8 copy of ``backbone``, calibrated on ``calibration``.

    FX graph-mode PTQ with the default qconfig of the current quantised engine
    (``torch.backends.quantized.engine``): convs fused with their BatchNorm and activation,
    per-channel int8 weights, uint8 activations whose ranges are the min / max observed over
    ``calibration`` (the client's own images: on a phone, the deployed model is calibrated, not
    trained, so its own data is what it can use). The result takes and returns float tensors
    and only runs forward; ``backbone`` is not modified.

    Parameters
    ----------
    backbone : nn.Module
        The float feature extractor (``model.features``).
    calibration : Tensor
        ``(N, C, H, W)`` images run through the observers once, ``batch_size`` at a time.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    qconfig = get_default_qconfig_mapping(torch.backends.quantized.engine)
    with warnings.catch_warnings():  # torch 2.x deprecates FX PTQ in favour of torchao
        warnings.simplefilter("ignore")
        # PTQ fuses BatchNorm with running statistics (eval mode). No name keeps the copy: once
        # fused, its unfused layers are freed, so calibration holds one float copy, not two.
        prepared = prepare_fx(copy.deepcopy(backbone).eval(), qconfig, (calibration[:1],))
        with torch.no_grad():
            for start in range(0, len(calibration), batch_size):
                prepared(calibration[start : start + batch_size])
        return convert_fx(prepared)


def int8_weight_bytes(quantized: nn.Module) -> int:
    """Bytes of a converted int8 model's weights, read off its quantised modules.

    Counted as an int8 runtime stores them: each quantised weight at 1 byte per element plus
    ``CHANNEL_QPARAM_BYTES`` per scale (an fp32 scale and an int32 zero point), fp32 biases,
    and any parameter or buffer left in float (GroupNorm) at its own width. Per-tensor
    activation qparams (two numbers per layer) are left out.
    """
    total = 0
    for module in quantized.modules():
        weight_fn = getattr(module, "weight", None)
        if callable(weight_fn) and not isinstance(weight_fn, nn.Module):
            weight = weight_fn()
            total += weight.numel() * weight.element_size()
            scales = (
                weight.q_per_channel_scales()
                if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
                else torch.ones(1)
            )
            total += scales.numel() * CHANNEL_QPARAM_BYTES
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += 0 if bias is None else bias.numel() * 4
        tensors = (*module.parameters(recurse=False), *module.buffers(recurse=False))
        # 0-d float buffers are the per-tensor activation scales of the graph, left out above.
        total += sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point() and t.dim())
    return total
