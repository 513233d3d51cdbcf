"""fedsim's command line: ``python run_sim.py [group=option ...] [key=value ...]`` (``-m`` sweeps).

A thin Hydra entry: it composes ``conf/``, hands the config and Hydra's run directory to
:func:`fedsim.simulation.run`, and turns bad input into one line on stderr.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.config import parse_simulation
from fedsim.errors import UserInputError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    verbose = bool(cfg.get("verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        parse_simulation(cfg)  # fail on a bad value before torch, Flower and Ray are imported
        from fedsim.simulation import run

        summary = run(cfg, out_dir, verbose=verbose, progress=str(cfg.get("progress", "auto")))
    except UserInputError as err:
        if verbose:
            traceback.print_exc()
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    accuracy = summary["final_accuracy"]
    shown = "n/a" if accuracy is None else f"{accuracy:.4f}"
    print(f"final accuracy {shown} after {summary['rounds']} rounds in {summary['wall_s']:.1f}s")
    print(f"results: {out_dir}")
    return accuracy  # Hydra sweepers (e.g. Optuna) can optimise this


if __name__ == "__main__":
    main()
