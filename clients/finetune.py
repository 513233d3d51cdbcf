"""Which parameters a client trains: full, head-only, bias-only, quantised fine-tuning.

This module owns the fine-tuning modes of on-device training as pure functions of a model's
structure (``trainable_names``) plus the one stateful step that applies a mode to a model
(``apply_mode``), and the shape trace of a training forward in a mode
(``trace_training_forward``: which ops run, on which shapes, and which tensors then need
gradients) that the memory and FLOP models (``fedsim.fleet.memory``, ``fedsim.fleet.flops``) read.
The modes trade accuracy for memory and compute on the phone:

- ``full``: every parameter, the FedAvg default.
- ``head``: only the ``classifier`` of a ``FeaturesClassifier``; the backbone is a frozen
  feature extractor, so no backbone activation has to be kept for backward.
- ``bias``: every bias, the affine parameters of every norm layer and the head, as in TinyTL
  [1]_. The trainable parameters are few, but gradients still flow through the whole backbone.
  [1]_'s point is that bias gradients do not need the conv *inputs*, only the weights, so a
  frozen conv need not store its input activation; see ``fedsim.fleet.memory`` for how much of that
  saving stock PyTorch realises (none, for convolutions).
- ``qat``: every parameter, trained through int8 fake quantisation of weights and activations
  (``clients.quantize``) so the model degrades little when deployed in int8.
- ``int8_head``: the head only, over a post-training-quantised int8 copy of the backbone
  (``clients.quantize.quantize_backbone``): what a phone running a deployed int8 model can
  fine-tune. Here it is frozen like ``head``; the float backbone is never changed.

References
----------
.. [1] Cai, Gan, Zhu, Han, "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device
   Learning", NeurIPS 2020. https://arxiv.org/abs/2007.11622
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

# Norm layers whose affine parameters TinyTL trains alongside the biases.
NORM_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)

HEAD_MODULE = "classifier"
HEAD_PREFIX = f"{HEAD_MODULE}."


class FineTuneMode(StrEnum):
    """How much of the model a client trains.

    The values are the strings configs use; see the module docstring for each mode.
    """

    FULL = "full"
    HEAD = "head"
    BIAS = "bias"
    QAT = "qat"
    INT8_HEAD = "int8_head"


# Modes whose backbone (everything but the classifier) is a frozen, eval-mode feature extractor.
FROZEN_BACKBONE_MODES = frozenset({FineTuneMode.HEAD, FineTuneMode.INT8_HEAD})


def _head_names(model: nn.Module) -> set[str]:
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise TypeError(
            "head and bias fine-tuning need a `classifier` submodule "
            "(the features/classifier seam of fedsim.models.layers.FeaturesClassifier)"
        )
    return {name for name, _ in model.named_parameters() if name.startswith(HEAD_PREFIX)}


def _bias_and_norm_names(model: nn.Module) -> set[str]:
    names = {
        name for name, _ in model.named_parameters() if name.endswith(".bias") or name == "bias"
    }
    for module_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{module_name}." if module_name else ""
            names |= {prefix + name for name, _ in module.named_parameters(recurse=False)}
    return names


def trainable_names(model: nn.Module, mode: FineTuneMode | str) -> set[str]:
    """Names of the parameters that ``mode`` trains (as in ``model.named_parameters()``).

    Parameters
    ----------
    model : nn.Module
        The model; ``head``, ``bias`` and ``int8_head`` need a ``classifier`` submodule.
    mode : FineTuneMode or str
        ``full`` and ``qat``: every parameter. ``head`` and ``int8_head``: those under
        ``classifier.``. ``bias``: every ``*.bias``, the weight and bias of every BatchNorm /
        GroupNorm / LayerNorm, and the head, as in TinyTL [1]_.

    Returns
    -------
    set of str
        A pure function of the model's structure: nothing is modified.

    Examples
    --------
    >>> from collections import OrderedDict
    >>> net = nn.Sequential(OrderedDict(features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)),
    ...                                  classifier=nn.Linear(2, 3)))
    >>> sorted(trainable_names(net, "bias"))  # doctest: +NORMALIZE_WHITESPACE
    ['classifier.bias', 'classifier.weight', 'features.0.bias', 'features.1.bias',
     'features.1.weight']
    """
    mode = FineTuneMode(mode)
    if mode in (FineTuneMode.FULL, FineTuneMode.QAT):
        return {name for name, _ in model.named_parameters()}
    if mode in FROZEN_BACKBONE_MODES:
        return _head_names(model)
    if mode is FineTuneMode.BIAS:
        return _head_names(model) | _bias_and_norm_names(model)
    raise NotImplementedError(f"no trainable-parameter rule for fine-tuning mode {mode!r}")


def freeze_batchnorm_stats(module: nn.Module) -> None:
    """Put every BatchNorm layer in ``module`` in eval mode, in place.

    In eval mode BatchNorm normalises with its running statistics and stops updating them. A
    frozen backbone must do both: in train mode its BatchNorm layers would keep re-estimating
    the statistics from each local batch, so a "frozen" backbone would drift (and differ
    between clients with non-IID data) although none of its parameters is trained. Other
    layers (dropout, fake-quant observers) keep their mode.

    ``nn.Module.train()`` undoes this: call it after any ``model.train()``.
    """
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.eval()


def apply_mode(model: nn.Module, mode: FineTuneMode | str) -> None:
    """Prepare ``model`` for training in ``mode``, in place.

    Sets ``requires_grad`` to match ``trainable_names`` and puts the model in train mode. For
    ``head`` and ``int8_head`` everything but the ``classifier`` (the ``features`` trunk of a
    ``FeaturesClassifier``) goes to eval mode: it is a fixed feature extractor,
    so its BatchNorm running statistics must not update (see ``freeze_batchnorm_stats``) and
    any dropout in it must not fire. ``bias`` keeps BatchNorm in train mode, as TinyTL [1]_
    trains the norm layers.

    As with ``freeze_batchnorm_stats``, a later ``model.train()`` undoes the eval mode, so a
    training loop must apply the mode after (or instead of) calling ``model.train()``.
    """
    mode = FineTuneMode(mode)
    names = trainable_names(model, mode)
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    model.train()
    if mode in FROZEN_BACKBONE_MODES:
        for name, child in model.named_children():
            if name != HEAD_MODULE:
                child.eval()


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
    model: nn.Module, input_shape: tuple[int, int, int], batch: int, mode: FineTuneMode | str
) -> list[OpCall]:
    """The torch function calls of one training forward in ``mode``, from shapes alone.

    A copy of ``model`` is put in ``mode`` (``apply_mode``) and moved to the meta device, and
    one ``(batch, *input_shape)`` meta tensor is run through it: ``model`` is not modified.
    """
    clone = copy.deepcopy(model)
    apply_mode(clone, mode)
    clone = clone.to("meta")
    tracer = _ShapeTracer(clone)
    with torch.no_grad(), tracer:
        clone(torch.zeros(batch, *input_shape, device="meta"))
    return tracer.calls
