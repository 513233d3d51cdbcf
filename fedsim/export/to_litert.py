"""LiteRT (TFLite): kept behind a one-line message, because its converter cannot be installed here.

The LiteRT path would be ``litert_torch.convert`` (PyTorch -> ``.tflite``) and, for int8, the
``ai-edge-quantizer`` recipe, run by ``ai_edge_litert``'s interpreter. It cannot be installed
beside fedsim's torch 2.13 and Flower stack (checked with ``pip install --dry-run`` and the
installed packages as constraints): litert-torch 0.9.x requires ``torch<2.13.0``, and 0.10.0, the
first to allow torch 2.13, pulls ``xdsl 0.28.0``, which requires ``typing-extensions<4.13`` while
the installed ``pydantic`` (Ray, Flower) requires ``>=4.14.1``. fedsim claims no format it has
not run in its runtime, so ``--to litert`` stops with that reason; the exporter can be added
here, with a test that runs the ``.tflite`` file, once a litert-torch release fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from fedsim.export.runtime import Exporter, ExportError, Predict

NOT_INSTALLABLE = (
    "litert-torch is not installable beside torch 2.13 here: litert-torch 0.9.x depends on "
    "torch<2.13.0, and 0.10.0 on xdsl 0.28.0, which depends on typing-extensions<4.13 "
    "(pydantic, used by Ray and Flower, needs >=4.14.1); use --to onnx or --to executorch"
)


class LiteRTExporter(Exporter):
    """``--to litert``: refuses in one line (see the module docstring)."""

    name = "litert"
    runtime = "ai-edge-litert"
    suffix = ".tflite"

    def check_installed(self) -> NoReturn:
        raise ExportError(NOT_INSTALLABLE)

    def version(self) -> str:
        self.check_installed()

    def export(
        self, model: nn.Module, example: torch.Tensor, path: Path,
        calibration: np.ndarray | None,
    ) -> dict[str, Any]:
        self.check_installed()

    def load(self, path: Path) -> Predict:
        self.check_installed()
