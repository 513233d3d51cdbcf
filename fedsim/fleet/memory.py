"""Memory of one on-device training step, estimated from shapes alone.

On a phone the training step must fit in RAM next to everything else. This module owns the
model of that memory (``MemoryEstimate``) and its estimate from layer shapes alone
(``estimate_train_memory``, a pure function of the shape trace :mod:`fedsim.fleet.trace`). The
tests keep it honest against a measurement of a real step (``tests/memory_probe.py``).

The components, in bytes:

- ``weights``: every parameter, at the stored bit width.
- ``gradients``: one fp32 ``.grad`` per trainable parameter.
- ``optimizer_state``: SGD's momentum buffer, one fp32 per trainable parameter.
- ``activations``: the tensors autograd saves in the forward pass and holds until backward,
  counted once per storage (a ReLU's output that the next conv also saves is one tensor) and
  excluding model state (parameters and buffers, which exist whether or not we train).
  As TinyTL [1]_ shows, this, not the parameters, is what dominates training memory.
- ``forward_peak``: the working set of a forward pass that saves nothing: the largest
  input + output of a single op (distinct storages, model state excluded), since a no-grad
  forward can free each input once its op has run. This is what a frozen backbone costs.

``total`` = weights + gradients + optimizer state + max(activations, forward peak): the saved
activations are all alive when backward starts, and a frozen backbone's working set is alive
while it runs. It is a lower bound on the true peak: it leaves out the transient gradient
buffers of backward (about two of the largest activations), the input batch when nothing saves
it, and allocator fragmentation.

Which tensors autograd saves depends on the op *and* on which of its inputs need gradients;
``saved_for_backward`` encodes PyTorch's rules, checked tensor by tensor against
``torch.autograd.graph.saved_tensors_hooks``. One rule undoes TinyTL's saving in stock PyTorch:
``ConvolutionBackward`` keeps the conv input whenever the conv is in the graph, even if its
weight is frozen and only the input gradient (which needs the weight, not the input) is
wanted. ``sparse_backprop=True`` models a runtime that drops it, as [1]_ and [2]_ assume.

References
----------
.. [1] Cai, Gan, Zhu, Han, "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
   Learning", NeurIPS 2020. https://arxiv.org/abs/2007.11622
.. [2] Lin et al., "On-Device Training Under 256KB Memory", NeurIPS 2022 (sparse backprop).
   https://arxiv.org/abs/2206.15472
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, replace

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from clients.finetune import FineTuneMode, Full
from clients.quantize import CHANNEL_QPARAM_BYTES, QUANTIZED_OPS
from fedsim.fleet.trace import OpCall, TensorInfo, trace_training_forward

FP32_BYTES = 4
INT64_BYTES = 8
INT8_FUSED_OPS = frozenset({"batch_norm", "relu"})  # run inside the int8 conv before them
FLOAT_NORM_OPS = frozenset({"group_norm", "layer_norm"})  # no int8 kernel: fp32 in the int8 graph


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held by one training step; see the module docstring for each component."""

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    forward_peak: int

    @property
    def total(self) -> int:
        """Model state plus the larger of saved activations and the no-grad working set."""
        state = self.weights + self.gradients + self.optimizer_state
        return state + max(self.activations, self.forward_peak)


def saved_for_backward(call: OpCall, sparse_backprop: bool = False) -> list[tuple[Hashable, int]]:
    """``(storage key, bytes)`` of the non-state tensors autograd saves for ``call``.

    PyTorch's rules (``tools/autograd/derivatives.yaml``), checked with saved-tensor hooks.
    Nothing is saved unless some input needs a gradient (no graph node). Then: conv2d saves
    its input and weight (whichever gradients are wanted: one joint backward formula); linear
    saves its input only if the weight needs a gradient (and the weight if the input does);
    batch / group norm save the input and two statistics (per channel, or per sample and
    group); ReLU saves its output, ReLU6 (hardtanh), hard-swish and hard-sigmoid their input;
    ``a * b`` saves ``b`` if ``a`` needs a gradient and ``a`` if ``b`` does; dropout on CPU is
    ``input * noise`` and saves the fp32 noise (a fused GPU kernel saves a 1-byte mask);
    pooling to 1x1 (a mean), adds and views save only shapes; max pooling saves its input and
    int64 argmax indices; concatenation and channel shuffles (views and copies) save nothing.

    Parameters
    ----------
    call : OpCall
        One traced op.
    sparse_backprop : bool
        Model a runtime that saves a conv's input only when its weight needs a gradient
        (TinyTL [1]_, [2]_); stock PyTorch does not.
    """
    a, out = call.args, call.out
    x = a.get("input")
    if not out.needs_grad or not isinstance(x, TensorInfo):
        return []
    fresh = (id(call), "saved")  # a tensor made for backward, shared with nothing
    saved: list[TensorInfo | tuple[Hashable, int]] = []
    # Weights are saved too, but are model state (dropped below) except the fake-quantised
    # copies of QAT (see ``fake_quantized_call``).
    if call.op == "conv2d":
        saved = [x] if a["weight"].needs_grad or not sparse_backprop else []
        saved += [a["weight"]]
    elif call.op == "linear":
        saved = [x] if a["weight"].needs_grad else []
        saved += [a["weight"]] if x.needs_grad else []
    elif call.op == "batch_norm":
        stats = out.shape[1] * FP32_BYTES if a.get("training") else 0
        saved = [x, ((fresh, 1), stats), ((fresh, 2), stats)]
    elif call.op == "group_norm":
        stats = out.shape[0] * a["num_groups"] * FP32_BYTES
        saved = [x, ((fresh, 1), stats), ((fresh, 2), stats)]
    elif call.op == "relu":
        saved = [out]
    elif call.op in ("hardtanh", "hardswish", "hardsigmoid"):
        saved = [x]
    elif call.op == "mul" and isinstance(a["other"], TensorInfo):
        saved = [t for t, other in ((a["other"], x), (x, a["other"])) if other.needs_grad]
    elif call.op == "dropout" and a.get("training", True) and 0 < a.get("p", 0.5) < 1:
        saved = [(fresh, math.prod(x.shape) * x.itemsize)]
    elif call.op == "adaptive_avg_pool2d" and a["output_size"] not in (1, (1, 1), [1, 1]):
        saved = [x]
    elif call.op == "max_pool2d":  # the input and the int64 argmax indices, one per output
        saved = [x, (fresh, math.prod(out.shape) * INT64_BYTES)]
    return [
        (t.storage, t.nbytes) if isinstance(t, TensorInfo) else t
        for t in saved
        if not (isinstance(t, TensorInfo) and t.is_state)
    ]


def fake_quantized_call(call: OpCall) -> tuple[OpCall, list[tuple[Hashable, int]]]:
    """``call`` as QAT runs it, and the tensors its fake-quant ops save (``clients.quantize``).

    A conv / linear in the graph computes with a fake-quantised *copy* of its weight (fp32,
    not model state, so saving it costs memory), and fake-quantises its output. Each
    ``fake_quantize_*`` op saves a 1-byte mask of where its input was inside the clamping
    range, for the straight-through gradient: the weight's mask if the weight trains, the
    output's if it needs a gradient. The raw conv output is saved by nothing, and its
    fake-quantised replacement has the same size, so downstream ops are unchanged.
    """
    if call.op not in QUANTIZED_OPS or not call.out.needs_grad:
        return call, []
    weight = call.args["weight"]
    copy_ = replace(weight, storage=(id(call), "weight"), is_state=False)
    masks = [((id(call), "out_mask"), math.prod(call.out.shape))]
    if weight.needs_grad:
        masks.append(((id(call), "weight_mask"), math.prod(weight.shape)))
    return replace(call, args=call.args | {"weight": copy_}), masks


def working_set(call: OpCall, itemsize: int | None = None) -> int:
    """Bytes of ``call``'s distinct non-state inputs and output: alive while it runs.

    ``itemsize`` overrides every tensor's element width (1 for an int8 runtime's tensors).
    """
    tensors = [v for v in call.args.values() if isinstance(v, TensorInfo)] + [call.out]
    sizes = {
        t.storage: t.nbytes if itemsize is None else t.nbytes // t.itemsize * itemsize
        for t in tensors
        if not t.is_state
    }
    return sum(sizes.values())


def int8_backbone_weight_bytes(backbone: nn.Module) -> int:
    """Estimated bytes of ``backbone`` once post-training-quantised, from its float structure.

    Mirrors ``clients.quantize.int8_weight_bytes``: every conv / linear weight at 1 byte, plus
    an fp32 scale and int32 zero point per output channel and its fp32 bias if it has one; a
    BatchNorm folds into the conv before it and leaves one fp32 bias per channel; any other
    parameter (GroupNorm's) stays fp32.
    """
    total = 0
    for module in backbone.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel() + module.weight.shape[0] * CHANNEL_QPARAM_BYTES
            total += 0 if module.bias is None else module.bias.numel() * FP32_BYTES
        elif isinstance(module, _BatchNorm):
            total += module.num_features * FP32_BYTES
        else:
            total += sum(p.numel() * FP32_BYTES for p in module.parameters(recurse=False))
    return total


def int8_forward_peak(
    model: nn.Module, input_shape: tuple[int, int, int], batch: int, head_calls: list[OpCall]
) -> int:
    """Working set of ``int8_head``'s forward: the int8 backbone, then the float pooling and head.

    Inside the backbone every tensor is 1 byte per element, and BatchNorm and ReLU run fused
    into the conv before them (``quantize_fx`` fuses conv-bn-relu into one int8 kernel, so
    only the fused op's input and output are alive; ReLU6 and hard-swish stay separate ops).
    Norms without an int8 kernel (GroupNorm) run in fp32 between a dequantise and a quantise.
    At the backbone's ends the fp32 input is quantised and the int8 features dequantised (both
    copies alive for that op); after it, ``head_calls`` (pooling and classifier, traced in
    fp32) run as usual.
    """
    backbone_calls = trace_training_forward(model.features, input_shape, batch, Full())
    image = batch * math.prod(input_shape)
    features = math.prod(backbone_calls[-1].out.shape)
    int8 = [
        working_set(call, itemsize=FP32_BYTES if call.op in FLOAT_NORM_OPS else 1)
        for call in backbone_calls
        if call.op not in INT8_FUSED_OPS
    ]
    boundaries = [image * (FP32_BYTES + 1), features * (1 + FP32_BYTES)]
    return max(*int8, *boundaries, *(working_set(call) for call in head_calls))


def loss_saved_bytes(logits: TensorInfo) -> int:
    """Cross-entropy saves the log-probabilities (fp32), the int64 targets and a scalar."""
    if not logits.needs_grad:
        return 0
    batch, classes = logits.shape
    return batch * classes * FP32_BYTES + batch * INT64_BYTES + FP32_BYTES


def estimate_train_memory(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch: int,
    mode: FineTuneMode,
    momentum: bool = True,
    weight_bits: int = 32,
    sparse_backprop: bool = False,
) -> MemoryEstimate:
    """Estimate the memory of one SGD step from shapes alone (no training, no autograd).

    Parameters
    ----------
    model : nn.Module
        The model; not modified (a meta-device copy is traced, see
        ``fedsim.fleet.trace.trace_training_forward``).
    input_shape : tuple of int
        ``(C, H, W)`` of one sample.
    batch : int
        Samples per step.
    mode : FineTuneMode
        Which parameters train (``clients.finetune``); a ``fake_quantized`` mode adds QAT's
        saved tensors (``fake_quantized_call``), an ``int8_backbone`` mode holds and runs the
        backbone in int8 (``int8_backbone_weight_bytes``, ``int8_forward_peak``).
    momentum : bool
        Whether SGD keeps a momentum buffer (one fp32 per trainable parameter).
    weight_bits : int
        Bits per stored weight (32 for fp32, 8 for int8); gradients stay fp32.
    sparse_backprop : bool
        See ``saved_for_backward``; ``False`` is what PyTorch does.

    Returns
    -------
    MemoryEstimate
        Each component in bytes; saved activations are counted once per storage, as autograd
        keeps one tensor however many ops save it.
    """
    calls = trace_training_forward(model, input_shape, batch, mode)
    saved: dict[Hashable, int] = {}
    for call in calls:
        if mode.fake_quantized:
            call, masks = fake_quantized_call(call)
            saved.update(masks)
        saved.update(saved_for_backward(call, sparse_backprop))
    names = mode.trainable_names(model)
    trainable = sum(p.numel() for name, p in model.named_parameters() if name in names)
    weights = math.ceil(sum(p.numel() for p in model.parameters()) * weight_bits / 8)
    forward_peak = max(working_set(call) for call in calls)
    if mode.int8_backbone:
        # The int8 copy replaces the float backbone on the phone; the head stays fp32.
        head = [p for name, p in model.named_parameters() if not name.startswith("features.")]
        weights = int8_backbone_weight_bytes(model.features) + sum(
            math.ceil(p.numel() * weight_bits / 8) for p in head
        )
        backbone_calls = len(trace_training_forward(model.features, input_shape, 1, Full()))
        forward_peak = int8_forward_peak(model, input_shape, batch, calls[backbone_calls:])
    return MemoryEstimate(
        weights=weights,
        gradients=trainable * FP32_BYTES,
        optimizer_state=trainable * FP32_BYTES if momentum else 0,
        # The last call makes the model's output: the logits the loss saves its inputs from.
        activations=sum(saved.values()) + loss_saved_bytes(calls[-1].out),
        forward_peak=forward_peak,
    )


def estimate_inference_memory(
    model: nn.Module, input_shape: tuple[int, int, int], batch: int
) -> int:
    """Bytes of a no-grad forward pass of ``batch`` samples, from shapes alone.

    The fp32 weights and buffers, plus the largest working set of a single op (its inputs and
    output, :func:`working_set`): nothing is saved for a backward pass. This is what a phone
    needs to run the teacher over its shard before distilling (``distill.where=client``); the
    teacher is freed before the student trains, so the two peaks do not add up.
    """
    calls = trace_training_forward(model, input_shape, batch, Full())
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return state + max(working_set(call) for call in calls)
