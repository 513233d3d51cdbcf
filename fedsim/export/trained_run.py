"""A finished run directory -> its trained student, test split and calibration images.

A run directory (``outputs/<date>/<time>/`` or any ``hydra.run.dir``) holds the composed config
(``.hydra/config.yaml``) and the final global model (``model.pt``: the float tensors of its
``state_dict``, :mod:`fedsim.models.state`). The student and the data are rebuilt exactly as the
run built them, by the run's own preparation (:func:`fedsim.run.preparation.prepare`, which
checks the config and loads the dataset and partition without starting Ray), so the test split
and the proxy split are the run's, sample for sample.

``finetune=qat`` trains through fake quantisation whose activation ranges live in the phone's
training step only (:class:`clients.quantize.FakeQuantMode`): they are neither uploaded nor in
``model.pt``. A QAT-trained student is therefore exported like any other, its int8 ranges
calibrated on the server's images (:mod:`fedsim.export.calibration`); :attr:`TrainedRun.finetune`
lets the report say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from fedsim.data.splits import ArrayDataset
from fedsim.errors import UserInputError
from fedsim.export.calibration import DEFAULT_SAMPLES, DEFAULT_SEED, CalibrationSet, calibration_set
from fedsim.export.runtime import ExportError
from fedsim.models.state import load_exchangeable_state

CONFIG, MODEL = Path(".hydra") / "config.yaml", Path("model.pt")


@dataclass(frozen=True, eq=False)
class TrainedRun:
    """A finished run's student (float, eval mode, NCHW) and the data it is judged on."""

    run_dir: Path
    model: nn.Module
    student: str  # the builder's name, e.g. "mobilenet_v2"
    dataset: str  # e.g. "digits"
    finetune: str  # the run's fine-tuning mode, e.g. "full" or "qat"
    test: ArrayDataset
    calibration: CalibrationSet

    @property
    def example(self) -> torch.Tensor:
        """One test image, ``(1, C, H, W)``: the input shape every exporter traces."""
        return torch.from_numpy(self.test.x[:1])


def read_config(run_dir: Path) -> DictConfig:
    """The run's composed config; ExportError if the directory is not a finished run."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory")
    for needed in (CONFIG, MODEL):
        if not (run_dir / needed).is_file():
            raise ExportError(
                f"{run_dir} has no {needed}: not a finished fedsim run directory "
                "(run_sim.py writes both)"
            )
    return OmegaConf.load(run_dir / CONFIG)


def load_run(
    run_dir: Path, samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED
) -> TrainedRun:
    """Rebuild ``run_dir``'s student with its final weights, its test split and calibration set.

    Parameters
    ----------
    run_dir : Path
        A finished run directory.
    samples, seed : int
        Size and seed of the calibration draw (:func:`fedsim.export.calibration.calibration_set`).
    """
    cfg = read_config(run_dir)
    # Imported here: the run's checks and data loading, without Ray or the engine.
    from fedsim.run.preparation import prepare

    try:
        prepared = prepare(cfg)
    except UserInputError as err:
        raise ExportError(f"{run_dir / CONFIG}: {err}") from None
    model = prepared.builder()
    try:
        state = torch.load(run_dir / MODEL, map_location="cpu", weights_only=True)
        load_exchangeable_state(model, state)
    except (KeyError, RuntimeError, OSError) as err:
        raise ExportError(
            f"{run_dir / MODEL} does not fit the configured student "
            f"{prepared.builder.model_name!r}: {str(err).splitlines()[0]}"
        ) from None
    # Exporters trace the plain NCHW layout; the channels-last format of training
    # (fedsim.models.factory) changes strides only, never values.
    model = model.to(memory_format=torch.contiguous_format).eval()
    splits = prepared.splits
    return TrainedRun(
        run_dir=run_dir,
        model=model,
        student=prepared.builder.model_name,
        dataset=splits.name,
        finetune=str(cfg.finetune.get("mode", "full")),
        test=splits.test,
        calibration=calibration_set(
            splits.train.x, prepared.shards.proxy_indices(), samples, seed
        ),
    )
