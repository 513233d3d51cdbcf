"""ExecuTorch with the XNNPACK delegate: ``torch.export``, PT2E int8, a ``.pte`` program.

- **fp32**: ``torch.export.export`` at batch 1, lowered by ``to_edge_transform_and_lower`` with
  the ``XnnpackPartitioner`` (XNNPACK is ExecuTorch's CPU backend on Android and iOS), written as
  a ``.pte`` program and run by ExecuTorch's own runtime (``executorch.runtime``) with its
  threadpool set to one thread.
- **int8**: the PT2E flow with ExecuTorch's ``XNNPACKQuantizer``: int8 weights per output
  channel (symmetric), int8 activations per tensor (affine) whose ranges a histogram observer
  sets on the calibration images ([1]_ section 2, [2]_ section 3), then ``convert_pt2e`` and the
  same lowering; XNNPACK runs each ``dequantize -> op -> quantize`` pattern as one int8 kernel.
  The quantizer annotates convolutions (fused with a following ReLU or ReLU6), linear layers,
  additions and average pooling; any other op (hard-swish, hard-sigmoid, the multiplications of
  squeeze-excite, concatenation) computes in float between a dequantize and a quantize.
  :func:`float_ops` counts them in the converted graph, and ``not_delegated`` counts the ops
  XNNPACK did not take (they run in ExecuTorch's portable kernels).

The program is traced at batch 1, the shape a phone runs; the test split runs image by image.

References
----------
.. [1] Jacob et al., "Quantization and Training of Neural Networks for Efficient
   Integer-Arithmetic-Only Inference", CVPR 2018. https://arxiv.org/abs/1712.05877
.. [2] Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A
   whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsim.export.runtime import Exporter, Predict, quiet, require

CALIBRATION_BATCH = 32
QUANTIZATION = (
    "PT2E with ExecuTorch's XNNPACKQuantizer: int8 weights per output channel (symmetric), "
    "int8 activations per tensor (affine), histogram-observer calibration"
)
QUANTIZE_OPS = ("quantize_per_tensor", "quantize_per_channel", "quantize_affine")
QDQ_OPS = QUANTIZE_OPS + ("dequantize_per_tensor", "dequantize_per_channel", "dequantize_affine")
# The quantizer fuses a conv / linear / add with a following ReLU or ReLU6 (hardtanh).
FUSED_ACTIVATIONS = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp")
BOOKKEEPING = ("getitem", "executorch_call_delegate")


def op_name(node: torch.fx.Node) -> str:
    """``aten.hardswish.default`` -> ``hardswish``; ``operator.getitem`` -> ``getitem``."""
    target = node.target
    name = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    return str(name).split(".")[0]


def float_ops(graph: torch.fx.Graph) -> dict[str, int]:
    """Op types (with counts) of a converted PT2E graph that pass their result on in float.

    In the converted graph every int8 op reads ``dequantize`` outputs and feeds a ``quantize``
    (a convolution fused with its ReLU feeds it through the ReLU); an op the quantizer left
    unannotated computes and hands on a float result.
    """
    counts = Counter(
        op_name(node) for node in graph.nodes
        if node.op == "call_function" and op_name(node) not in QDQ_OPS + BOOKKEEPING
        and not quantized_output(node)
    )
    return dict(sorted(counts.items()))


def quantized_output(node: torch.fx.Node) -> bool:
    """Whether ``node``'s result is quantized, directly or through one fused activation."""
    users = list(node.users)
    if users and all(op_name(user) in QUANTIZE_OPS for user in users):
        return True
    return len(users) == 1 and op_name(users[0]) in FUSED_ACTIVATIONS and quantized_output(users[0])


def not_delegated(graph: torch.fx.Graph) -> dict[str, int]:
    """Op types (with counts) of a lowered graph left outside the XNNPACK delegate."""
    counts = Counter(
        op_name(node) for node in graph.nodes
        if node.op == "call_function" and op_name(node) not in BOOKKEEPING
    )
    return dict(sorted(counts.items()))


class ExecuTorchExporter(Exporter):
    """The student as an ExecuTorch ``.pte`` program with the XNNPACK delegate."""

    name = "executorch"
    runtime = "executorch"
    suffix = ".pte"

    def check_installed(self) -> None:
        for module in (
            "executorch.exir", "executorch.runtime",
            "executorch.backends.xnnpack.partition.xnnpack_partitioner",
            "executorch.backends.xnnpack.quantizer.xnnpack_quantizer",
            "torchao.quantization.pt2e.quantize_pt2e",
        ):
            require(module, "--to executorch")

    def version(self) -> str:
        from importlib.metadata import version

        return f"executorch {version('executorch')}"

    def export(
        self, model: nn.Module, example: torch.Tensor, path: Path,
        calibration: np.ndarray | None,
    ) -> dict[str, Any]:
        exir = require("executorch.exir", "--to executorch")
        xnnpack = require(
            "executorch.backends.xnnpack.partition.xnnpack_partitioner", "--to executorch"
        )
        info: dict[str, Any] = {"exporter": f"torch.export + XNNPACK, torch {torch.__version__}"}
        with quiet():
            if calibration is not None:
                converted = self._quantize(model, example, calibration)
                info |= {"quantization": QUANTIZATION, "float_ops": float_ops(converted.graph)}
                model = converted
            program = torch.export.export(model, (example,))
            lowered = exir.to_edge_transform_and_lower(
                program, partitioner=[xnnpack.XnnpackPartitioner()]
            )
            info["not_delegated"] = not_delegated(lowered.exported_program().graph_module.graph)
            path.write_bytes(lowered.to_executorch().buffer)
        return info

    def load(self, path: Path) -> Predict:
        runtime = require("executorch.runtime", "--to executorch")
        pybindings = require("executorch.extension.pybindings.portable_lib", "--to executorch")
        with quiet():
            pybindings._unsafe_reset_threadpool(1)  # XNNPACK's threadpool: one thread
            method = runtime.Runtime.get().load_program(path).load_method("forward")

        def predict(x: np.ndarray) -> np.ndarray:
            # Traced at batch 1: one execute per image.
            return np.concatenate([
                method.execute([torch.from_numpy(x[i : i + 1])])[0].numpy() for i in range(len(x))
            ])

        return predict

    @staticmethod
    def _quantize(
        model: nn.Module, example: torch.Tensor, calibration: np.ndarray
    ) -> torch.fx.GraphModule:
        """PT2E post-training quantization for XNNPACK, calibrated in batches.

        Traced with a dynamic batch so the histogram observers see ``CALIBRATION_BATCH`` images a
        call (image by image they cost minutes); the converted graph is then re-traced at batch 1.
        """
        pt2e = require("torchao.quantization.pt2e.quantize_pt2e", "--int8 --to executorch")
        quantizer_module = require(
            "executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "--int8 --to executorch"
        )
        quantizer = quantizer_module.XNNPACKQuantizer().set_global(
            quantizer_module.get_symmetric_quantization_config(is_per_channel=True)
        )
        # torch.export specialises a dimension traced at size 1, so trace a batch of two.
        traced = torch.export.export(
            model, (example.repeat(2, 1, 1, 1),), dynamic_shapes=({0: torch.export.Dim("batch")},)
        )
        prepared = pt2e.prepare_pt2e(traced.module(), quantizer)
        with torch.no_grad():
            for i in range(0, len(calibration), CALIBRATION_BATCH):
                prepared(torch.from_numpy(calibration[i : i + CALIBRATION_BATCH]))
        return pt2e.convert_pt2e(prepared)
