"""ONNX, run by ONNX Runtime: fp32 through ``torch.onnx.export``, int8 by static QDQ quantization.

- **fp32**: torch 2.13's default exporter (``dynamo=True``: ``torch.export`` then onnxscript),
  which folds BatchNorm into the convolutions and handles all five students (MobileNetV2's
  ReLU6 as ``Clip``, MobileNetV3's and GhostNet's hard-swish / hard-sigmoid, ShuffleNetV2's
  channel shuffle as ``Reshape`` / ``Transpose``, GhostNet's and SqueezeNet's concatenations).
  The batch axis is dynamic so the test split runs in batches; the latency is measured at 1.
- **int8**: ONNX Runtime's own quantizer, as its documentation recommends for CNNs on the CPU:
  ``quant_pre_process`` (shape inference, graph optimisation), then ``quantize_static`` in the
  QDQ format with per-output-channel symmetric int8 weights and per-tensor asymmetric uint8
  activations whose ranges are the min / max seen on the calibration images ([1]_ section 2,
  [2]_ sections 2-3). At session start ONNX Runtime fuses each ``DequantizeLinear -> op ->
  QuantizeLinear`` it has an int8 kernel for (``QLinearConv``, ``QLinearAdd``, ``QLinearMul``,
  ``QLinearConcat``, ``QGemm``); an op without one runs in float between a dequantize and a
  quantize. :func:`float_ops` reads that off the optimised graph, so the report names which ops
  of a student fall back to float (e.g. ``HardSigmoid`` in MobileNetV3's hard-swish and
  squeeze-excite, ``ReduceMean`` of global pooling).

References
----------
.. [1] Jacob et al., "Quantization and Training of Neural Networks for Efficient
   Integer-Arithmetic-Only Inference", CVPR 2018. https://arxiv.org/abs/1712.05877
.. [2] Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A
   whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsim.export.runtime import Exporter, Predict, quiet, require

INPUT, OUTPUT = "images", "logits"
CALIBRATION_BATCH = 32
EXPORTER = f"torch.onnx.export (dynamo), torch {torch.__version__}"
QUANTIZATION = (
    "ONNX Runtime quantize_static, QDQ format: int8 weights per output channel (symmetric), "
    "uint8 activations per tensor (asymmetric), MinMax calibration"
)
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def one_thread_options(optimization: Any = None, optimized_path: Path | None = None) -> Any:
    """ONNX Runtime session options for one thread (and, optionally, a dump of the graph)."""
    ort = require("onnxruntime", "--to onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notice about the serialised graph
    if optimization is not None:
        options.graph_optimization_level = optimization
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def float_ops(path: Path) -> dict[str, int]:
    """Op types (with counts) that run in float inside an int8 QDQ model.

    Read off the graph as ONNX Runtime optimises it (its QDQ fusions included, its hardware-
    specific layout passes left out): a node other than a (de)quantize that takes the output of a
    ``DequantizeLinear`` got no int8 kernel, so it computes in float.
    """
    ort = require("onnxruntime", "--to onnx")
    onnx = require("onnx", "--to onnx")
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = one_thread_options(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
    dequantized = {
        out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output
    }
    counts = Counter(
        node.op_type for node in graph.node
        if node.op_type not in QDQ_OPS and dequantized.intersection(node.input)
    )
    return dict(sorted(counts.items()))


class _Batches:
    """The calibration images as ONNX Runtime's ``CalibrationDataReader`` protocol wants them."""

    def __init__(self, images: np.ndarray) -> None:
        self._batches = iter(
            {INPUT: images[i : i + CALIBRATION_BATCH]}
            for i in range(0, len(images), CALIBRATION_BATCH)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


class OnnxExporter(Exporter):
    """The student as an ``.onnx`` file, run by ONNX Runtime's CPU execution provider."""

    name = "onnx"
    runtime = "onnxruntime"
    suffix = ".onnx"

    def check_installed(self) -> None:
        for module in ("onnx", "onnxscript", "onnxruntime", "onnxruntime.quantization"):
            require(module, "--to onnx")

    def version(self) -> str:
        return f"onnxruntime {require('onnxruntime', '--to onnx').__version__}"

    def export(
        self, model: nn.Module, example: torch.Tensor, path: Path,
        calibration: np.ndarray | None,
    ) -> dict[str, Any]:
        if calibration is None:
            self._export_float(model, example, path)
            return {"exporter": EXPORTER}
        quantization = require("onnxruntime.quantization", "--int8 --to onnx")
        shape_inference = require("onnxruntime.quantization.shape_inference", "--int8 --to onnx")
        with tempfile.TemporaryDirectory() as tmp:
            float_path, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
            self._export_float(model, example, float_path)
            with quiet():
                shape_inference.quant_pre_process(str(float_path), str(prepared))
                quantization.quantize_static(
                    str(prepared), str(path), _Batches(calibration),
                    quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                    # uint8 activations x int8 weights (U8S8): with int8 activations ONNX
                    # Runtime left 15 of MobileNetV2's 52 convolutions in float on this x86 CPU.
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    calibrate_method=quantization.CalibrationMethod.MinMax,
                )
        return {
            "exporter": EXPORTER,
            "quantization": QUANTIZATION,
            "float_ops": float_ops(path),
        }

    def load(self, path: Path) -> Predict:
        ort = require("onnxruntime", "--to onnx")
        session = ort.InferenceSession(
            str(path), one_thread_options(), providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def predict(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(x)})[0]

        return predict

    def _export_float(self, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        require("onnxscript", "--to onnx (torch's dynamo exporter)")
        # torch.export specialises a dimension traced at size 1, so trace a batch of two.
        batch = torch.export.Dim("batch")
        with quiet():
            torch.onnx.export(
                model, (example.repeat(2, 1, 1, 1),), str(path), dynamo=True,
                input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: batch},),
                external_data=False,
            )
