"""How big a network is: parameters, bytes on a phone at fp32 and int8, FLOPs per inference.

The figures ``summary.json`` reports for the teacher and the student (``distill``) and the
student table of ``bench/students.py``, each re-derivable by hand:

- ``parameters``: ``sum(p.numel())`` over ``model.parameters()``;
- ``bytes_fp32``: the float tensors of the state dict (what a phone downloads and stores,
  BatchNorm running statistics included) at 4 bytes each;
- ``bytes_int8``: the model post-training-quantised as ``int8_head`` deploys a backbone
  (:func:`fedsim.fleet.memory.int8_backbone_weight_bytes`: conv / linear weights at 1 byte plus an
  fp32 scale and int32 zero point per output channel, BatchNorm folded into a bias);
- ``flops_per_inference``: one forward pass of one sample, multiply-add counted as 2 FLOPs
  (:func:`fedsim.fleet.flops.count_flops`).

:func:`model_bytes` is what every phone downloads each round, for the simulated clock.
"""

from __future__ import annotations

from collections.abc import Collection

from flwr.app import ArrayRecord
from torch import nn

from clients.finetune import Full
from fedsim.compression.wire import record_nbytes
from fedsim.fleet.flops import count_flops
from fedsim.fleet.memory import int8_backbone_weight_bytes
from fedsim.models.state import exchangeable_state


def model_size(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """``parameters``, ``bytes_fp32``, ``bytes_int8`` and ``flops_per_inference`` of ``model``."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes_fp32": sum(t.numel() * t.element_size() for t in exchangeable_state(model).values()),
        "bytes_int8": int8_backbone_weight_bytes(model),
        "flops_per_inference": count_flops(model, input_shape, Full(), batch=1).forward,
    }


def model_bytes(arrays: ArrayRecord, names: Collection[str] | None = None) -> int:
    """Bytes of the global model's tensors ``names`` (default: all) as a phone downloads them.

    ``names``: what a phone downloads each round
    (:attr:`fedsim.fleet.exchange.Exchange.downloaded`).
    """
    if names is not None:
        arrays = ArrayRecord({k: a for k, a in arrays.items() if k in names})
    return record_nbytes(arrays)
