"""The shape trace of one training forward: which ops run, on which shapes, needing gradients.

The server's cost models of on-device training (:mod:`fedsim.fleet.memory`,
:mod:`fedsim.fleet.flops`) read a model's training step off this trace rather than running it:
a copy of the model, prepared for a fine-tuning mode (:mod:`clients.finetune`), runs on meta
tensors under a ``TorchFunctionMode`` that records every torch function call with its bound
arguments (:class:`OpCall`). Shapes are exact, nothing is computed or allocated, and which
tensors would need a gradient in the real step is propagated by hand.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from clients.finetune.base import FineTuneMode
from fedsim.models.batch_statistics import batch_norms


@dataclass(frozen=True)
class TensorInfo:
    """What the shape trace knows about one tensor of a training step."""

    storage: Hashable  # views share their base's storage, and so its key
    nbytes: int  # bytes of the whole storage
    shape: tuple[int, ...]
    itemsize: int
    needs_grad: bool  # in the training step being modelled, not in the trace itself
    is_state: bool  # a parameter or buffer of the model


@dataclass(frozen=True)
class OpCall:
    """One torch function the model's forward called, its arguments bound to names."""

    op: str
    args: dict[str, Any]  # TensorInfo in place of every tensor
    out: TensorInfo


# Argument names of the torch functions MobileNets call (positional in nn modules' forwards).
ARG_NAMES: dict[str, tuple[str, ...]] = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "linear": ("input", "weight", "bias"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "dropout": ("input", "p", "training", "inplace"),
    "relu": ("input",),
    "hardtanh": ("input",),
    "hardswish": ("input",),
    "hardsigmoid": ("input",),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "mul": ("input", "other"),
    "add": ("input", "other"),
    "flatten": ("input",),
    "view": ("input",),
    "reshape": ("input",),
    # ShuffleNetV2 / GhostNet / SqueezeNet: concatenation, channel shuffle and max pooling.
    "cat": ("tensors", "dim"),
    "unflatten": ("input", "dim", "sizes"),
    "transpose": ("input", "dim0", "dim1"),
    "contiguous": ("input",),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation"),
}
OP_ALIASES = {"__mul__": "mul", "__rmul__": "mul", "__add__": "add", "__radd__": "add"}


def _is_tensor_sequence(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    return all(isinstance(t, Tensor) for t in value)


class _ShapeTracer(TorchFunctionMode):
    """Records every torch function call of a forward as an ``OpCall``.

    Runs on meta tensors under ``no_grad``: shapes are exact, nothing is computed or
    allocated, and ``needs_grad`` is propagated here (an output needs a gradient iff some
    input does) instead of by autograd. Only calls that return one tensor are recorded; ops
    outside ``ARG_NAMES`` that need a gradient raise a warning, as the cost models ignore them.
    A sequence of tensors in (``cat``) binds as a tuple of ``TensorInfo``; the tensors of a
    sequence out (``chunk``) are not recorded but inherit ``needs_grad`` from the inputs.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.calls: list[OpCall] = []
        self._infos: dict[int, tuple[Tensor, TensorInfo]] = {}  # id -> (kept alive, info)
        self._state = {id(t) for t in (*model.parameters(), *model.buffers())}

    def info(self, t: Tensor, needs_grad: bool | None = None) -> TensorInfo:
        if id(t) not in self._infos:
            is_state = id(t) in self._state
            if needs_grad is None:  # a tensor from outside the trace: the input or state
                needs_grad = is_state and t.requires_grad
            storage = t.untyped_storage()
            info = TensorInfo(
                storage=storage._cdata,
                nbytes=storage.nbytes(),
                shape=tuple(t.shape),
                itemsize=t.element_size(),
                needs_grad=needs_grad,
                is_state=is_state,
            )
            self._infos[id(t)] = (t, info)
        return self._infos[id(t)][1]

    def _bind(self, value: Any) -> Any:
        """``TensorInfo`` for a tensor, a tuple of them for a sequence of tensors (``cat``)."""
        if isinstance(value, Tensor):
            return self.info(value)
        if _is_tensor_sequence(value):
            return tuple(self.info(t) for t in value)
        return value

    def __torch_function__(
        self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        name = OP_ALIASES.get(name, name)
        in_place = name.endswith("_") and not name.startswith("__")  # e.g. BN's step counter
        if in_place:
            return out
        if _is_tensor_sequence(out):  # e.g. ``chunk``: views, not recorded, but they carry the grad
            inputs = [self.info(t) for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
            for t in out:
                self.info(t, t.is_floating_point() and any(i.needs_grad for i in inputs))
            return out
        if not isinstance(out, Tensor):
            return out
        names = ARG_NAMES.get(name, ())
        bound = {names[i] if i < len(names) else f"arg{i}": v for i, v in enumerate(args)} | kwargs
        bound = {k: self._bind(v) for k, v in bound.items()}
        needs_grad = out.is_floating_point() and any(
            t.needs_grad
            for v in bound.values()
            for t in (v if isinstance(v, tuple) else (v,))
            if isinstance(t, TensorInfo)
        )
        if name not in ARG_NAMES and needs_grad:
            warnings.warn(f"training trace: op {name!r} is not modelled (no FLOPs, saves nothing)")
        self.calls.append(OpCall(op=name, args=bound, out=self.info(out, needs_grad)))
        return out


def trace_training_forward(
    model: nn.Module, input_shape: tuple[int, int, int], batch: int, mode: FineTuneMode
) -> list[OpCall]:
    """The torch function calls of one training forward in ``mode``, from shapes alone.

    A copy of ``model`` is prepared for ``mode`` (``mode.prepare``: which parameters need
    gradients, which layers run in eval mode) and moved to the meta device, and one
    ``(batch, *input_shape)`` meta tensor is run through it: ``model`` is not modified.
    """
    clone = copy.deepcopy(model)
    mode.prepare(clone)
    for norm in batch_norms(clone):
        # momentum=None divides by the batch counter, which a meta tensor cannot give; the
        # momentum changes no shape, so the trace uses PyTorch's default.
        norm.momentum = 0.1 if norm.momentum is None else norm.momentum
    clone = clone.to("meta")
    tracer = _ShapeTracer(clone)
    with torch.no_grad(), tracer:
        clone(torch.zeros(batch, *input_shape, device="meta"))
    return tracer.calls
