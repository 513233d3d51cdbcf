"""``python -m fedsim.export``: the exported file, run by its own runtime, matches the student.

A tiny run directory is built by hand (no Ray, nothing trained): the composed config with the
digits dataset and a freshly initialised 0.35x MobileNetV2 as ``model.pt``. fp32 ONNX must agree
with PyTorch on every test image; int8 ONNX and both ExecuTorch programs must run in their
runtimes and report every field; bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from fedsim.export.__main__ import main
from fedsim.export.calibration import POOL, PROXY, calibration_set, seeded_draw
from fedsim.export.export_run import export_run
from fedsim.export.trained_run import load_run
from fedsim.models.state import exchangeable_state
from fedsim.run.preparation import prepare
from tests.helpers import ROOT, make_cfg

TINY_RUN = ("model.width_mult=0.35", "audit=none")
DIGITS_TRAIN, DIGITS_TEST = 1437, 360
REPORT_FIELDS = {
    "run_dir", "student", "dataset", "finetune", "format", "runtime", "int8", "file",
    "size_bytes", "size_kb", "test_samples", "accuracy", "pytorch_accuracy", "agreement",
    "max_logit_diff", "latency_ms", "pytorch_latency_ms", "latency_runs", "threads",
    "calibration", "exporter",
}
INT8_FIELDS = {"quantization", "float_ops"}

needs_onnx = pytest.mark.skipif(
    any(find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="onnx, onnxruntime and onnxscript are optional (the export extra, part of .[test]): "
    "pip install -e '.[export]'",
)
needs_executorch = pytest.mark.skipif(
    find_spec("executorch") is None,
    reason="executorch is optional (the export extra, part of .[test]): pip install -e '.[export]'",
)


def write_run(run_dir: Path, *overrides: str) -> Path:
    """A finished-looking run directory: the composed config and a seeded, untrained student."""
    cfg = make_cfg(*overrides)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(0)
    model = prepare(cfg).builder()
    torch.save(exchangeable_state(model), run_dir / "model.pt")
    return run_dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("export") / "run", *TINY_RUN)


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run the command in-process; its exit code and its stderr lines."""
    code = main(list(argv))
    return code, capsys.readouterr().err.splitlines()


# --- calibration: pure -------------------------------------------------------------------------


def test_seeded_draw_is_sorted_reproducible_and_takes_all_when_short():
    ids = np.arange(100, 110)
    assert seeded_draw(ids, 20, seed=0).tolist() == list(range(100, 110))
    drawn = seeded_draw(ids, 4, seed=3)
    assert len(drawn) == 4 and np.all(np.diff(drawn) > 0) and set(drawn) <= set(ids)
    assert drawn.tolist() == seeded_draw(ids, 4, seed=3).tolist()


def test_calibration_prefers_the_proxy_split_and_states_its_source():
    train_x = np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1)
    proxy = calibration_set(train_x, np.array([1, 4]), samples=10)
    assert proxy.source == PROXY and proxy.x.ravel().tolist() == [1.0, 4.0]
    assert proxy.describe() == {"source": PROXY, "samples": 2, "of": 2, "seed": 0}
    pool = calibration_set(train_x, np.array([], dtype=np.int64), samples=3, seed=1)
    assert pool.source == POOL and pool.describe()["of"] == 6 and len(pool.x) == 3


def test_a_run_with_a_proxy_split_calibrates_on_it(tmp_path):
    run = load_run(write_run(tmp_path / "run", *TINY_RUN, "pretrain=proxy"), samples=1000)
    proxy_ids = prepare(make_cfg(*TINY_RUN, "pretrain=proxy")).shards.proxy_indices()
    assert run.calibration.source == PROXY
    assert run.calibration.describe()["of"] == len(proxy_ids) == len(run.calibration.x)
    assert run.test.x.shape == (DIGITS_TEST, 1, 8, 8)


def test_a_qat_run_is_known_as_one(tmp_path):
    """Its int8 report says the ranges are calibrated: QAT's fake-quant ranges are not in model.pt."""
    assert load_run(write_run(tmp_path / "run", *TINY_RUN, "finetune=qat")).finetune == "qat"


# --- ONNX --------------------------------------------------------------------------------------


@needs_onnx
def test_fp32_onnx_agrees_with_pytorch_on_every_test_image(digits_run):
    report = export_run(digits_run, "onnx", latency_runs=20)
    assert set(report) == REPORT_FIELDS
    assert report["agreement"] == 1.0 and report["accuracy"] == report["pytorch_accuracy"]
    assert report["max_logit_diff"] < 1e-4
    assert report["test_samples"] == DIGITS_TEST and report["calibration"] is None
    written = digits_run / "export" / "student.onnx"
    assert report["size_bytes"] == written.stat().st_size and report["int8"] is False
    assert json.loads((digits_run / "export" / "student.onnx.json").read_text()) == report


@needs_onnx
def test_int8_onnx_runs_in_onnxruntime_and_reports_every_field(digits_run):
    import onnx
    import onnxruntime

    report = export_run(digits_run, "onnx", int8=True, samples=64, latency_runs=20)
    assert set(report) == REPORT_FIELDS | INT8_FIELDS
    assert report["int8"] is True and report["file"] == "export/student.int8.onnx"
    assert report["calibration"] == {"source": POOL, "samples": 64, "of": DIGITS_TRAIN, "seed": 0}
    assert 0.0 <= report["agreement"] <= 1.0 and report["latency_ms"] > 0
    assert isinstance(report["float_ops"], dict)
    path = digits_run / report["file"]
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(path)).graph.node}
    # The file itself, opened afresh, runs and gives one row of logits per image.
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = load_run(digits_run).test.x[:5]
    assert session.run(None, {session.get_inputs()[0].name: images})[0].shape == (5, 10)


# --- ExecuTorch ----------------------------------------------------------------------------------


@needs_executorch
def test_executorch_programs_run_in_the_executorch_runtime(tmp_path):
    run_dir = write_run(tmp_path / "run", "model=squeezenet", "model.width_mult=0.25", "audit=none")
    fp32 = export_run(run_dir, "executorch", latency_runs=10)
    assert fp32["agreement"] == 1.0 and fp32["max_logit_diff"] < 1e-3
    assert fp32["not_delegated"] == {}  # XNNPACK takes the whole of SqueezeNet
    int8 = export_run(run_dir, "executorch", int8=True, samples=16, latency_runs=10)
    assert set(int8) == REPORT_FIELDS | INT8_FIELDS | {"not_delegated"}
    assert int8["file"] == "export/student.int8.pte" and int8["size_bytes"] < fp32["size_bytes"]


# --- bad input: one line, exit code 2 ------------------------------------------------------------


def branching_student(
    num_classes: int, in_channels: int, input_size: int, norm_layer, width_mult: float,
    dropout: float,
) -> nn.Module:
    """A student whose forward branches on its input's values: no graph exporter can trace it."""

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(in_channels * input_size * input_size, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.linear(x.flatten(1))
            return logits if x.mean() > 0 else -logits

    return Branching()


def test_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    code, err = cli(capsys, str(tmp_path / "missing"), "--to", "onnx")
    assert code == 2 and err == [f"fedsim.export: error: {tmp_path / 'missing'} is not a directory"]
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("{}\n")
    code, err = cli(capsys, str(tmp_path / "run"), "--to", "onnx", "--int8")
    assert code == 2 and len(err) == 1 and "has no model.pt" in err[0]


def test_python_dash_m_fedsim_export_is_the_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.export", str(tmp_path), "--to", "onnx"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"fedsim.export: error: {tmp_path} has no .hydra/config.yaml: not a finished fedsim run "
        "directory (run_sim.py writes both)"
    ]


def test_weights_of_another_student_are_one_line(digits_run, tmp_path, capsys):
    other = write_run(tmp_path / "run", "model=squeezenet", "audit=none")
    (other / "model.pt").write_bytes((digits_run / "model.pt").read_bytes())
    code, err = cli(capsys, str(other), "--to", "onnx")
    assert code == 2 and len(err) == 1
    assert "does not fit the configured student 'squeezenet'" in err[0]


@needs_onnx
def test_a_student_the_exporter_cannot_trace_is_one_line(tmp_path, capsys):
    run_dir = write_run(
        tmp_path / "run", f"model._target_={__name__}.branching_student", "audit=none"
    )
    code, err = cli(capsys, str(run_dir), "--to", "onnx")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("fedsim.export: error: --to onnx cannot export student ")


def test_a_missing_runtime_is_one_line(digits_run, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    code, err = cli(capsys, str(digits_run), "--to", "onnx")
    assert code == 2 and len(err) == 1
    assert "needs onnxruntime, which is not installed here (pip install -e '.[export]')" in err[0]


def test_litert_says_why_it_is_not_available(digits_run, capsys):
    code, err = cli(capsys, str(digits_run), "--to", "litert")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("fedsim.export: error: litert-torch is not installable beside torch")
