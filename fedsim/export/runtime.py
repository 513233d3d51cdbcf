"""What an exporter is: a runtime's way to write the student to a file and to run that file.

Each runtime (ONNX Runtime, ExecuTorch, LiteRT) has one :class:`Exporter` subclass in its own
module. An exporter writes the float student (and, with ``int8``, its post-training-quantised
version) with the runtime's own tooling, and loads the written file back as a :data:`Predict`
function that runs it *in that runtime*, on one thread, so the accuracy and latency in the
report are the deployed file's and not PyTorch's.

Bad input ends in an :class:`ExportError`, one line: a runtime that is not installed
(:func:`require`), or a student the exporter cannot trace (:func:`cannot_export`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsim.errors import UserInputError

# (N, C, H, W) float32 images -> (N, classes) float32 logits, computed by the runtime.
Predict = Callable[[np.ndarray], np.ndarray]
INSTALL_HINT = "pip install -e '.[export]'"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in torch.onnx's messages


class ExportError(UserInputError):
    """The run cannot be exported as asked; one line naming the file, student or runtime."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise a one-line ExportError saying how to install it."""
    try:
        with quiet():
            return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed here "
            f"({INSTALL_HINT}): {str(err).splitlines()[0]}"
        ) from None


def cannot_export(student: str, exporter: str, err: BaseException) -> ExportError:
    """The one-line error for a student an exporter cannot handle, from the exporter's error.

    The exporters' own errors run to pages (a graph dump, a stack of frames) and wrap each other
    (torch.onnx wraps torch.export's); the first line of the innermost one names the op or the
    construct, which is what the user can act on.
    """
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [ANSI.sub("", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    detail = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return ExportError(f"{exporter} cannot export student {student!r}: {detail}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines.

    torch.onnx, onnxruntime's quantizer, torchao and ExecuTorch each print pages of progress and
    deprecation notices; the command prints one line per file instead. Errors still raise.
    """
    sink = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run PyTorch on ``count`` threads inside the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Exporter(ABC):
    """One runtime: write the student to its file format, load the file back to run it.

    Subclasses set ``name`` (the ``--to`` value), ``runtime`` (what runs the file) and
    ``suffix`` (the file extension, with the dot).
    """

    name: str
    runtime: str
    suffix: str

    @abstractmethod
    def check_installed(self) -> None:
        """Raise ExportError (one line) if this runtime's packages cannot be imported."""

    @abstractmethod
    def export(
        self, model: nn.Module, example: torch.Tensor, path: Path,
        calibration: np.ndarray | None,
    ) -> dict[str, Any]:
        """Write ``model`` (eval mode, float) to ``path``; int8 when ``calibration`` is given.

        ``example`` is one input batch ``(1, C, H, W)``. Returns what the report should say
        about the conversion (quantisation scheme, ops left in float, ...).
        """

    @abstractmethod
    def load(self, path: Path) -> Predict:
        """The written file as a function run by this runtime on one thread."""

    @abstractmethod
    def version(self) -> str:
        """The runtime's name and version, e.g. ``onnxruntime 1.32.0``."""

    def file_name(self, int8: bool) -> str:
        """``student.onnx``, ``student.int8.onnx``, ..."""
        return "student" + (".int8" if int8 else "") + self.suffix
