"""fedsim's command line: ``python run_sim.py [group=option ...] [key=value ...]`` (``-m`` sweeps).

A thin Hydra entry: it composes ``conf/``, hands the config and Hydra's run directory to
:func:`fedsim.run.simulation.run`, and turns bad input into one line on stderr.
"""

from __future__ import annotations

import time

# summary.json's startup_s and total_s count from here: the process's start for its first job,
# the previous job's end for the next one of a sweep.
job_started = [time.perf_counter()]

import gc  # noqa: E402 - after the clock starts: the imports below are part of start-up
import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.command_line import check_overrides, overrides_of
from fedsim.config import parse_simulation
from fedsim.errors import UserInputError
from fedsim.run.resume import resume_config


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    verbose = bool(cfg.get("verbose", False))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        if cfg.get("resume"):
            out_dir = Path(cfg.resume)
            cfg = resume_config(out_dir, list(HydraConfig.get().overrides.task))
        parse_simulation(cfg)  # fail on a bad value before torch, Flower and Ray are imported
        from fedsim.run.simulation import run

        summary = run(
            cfg, out_dir, verbose=verbose, progress=str(cfg.get("progress", "auto")),
            resume=bool(cfg.get("resume")), process_started=job_started[0],
        )
    except UserInputError as err:
        if verbose:
            traceback.print_exc()
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    from fedsim.report.timing import closing_line

    print(closing_line(summary))
    print(f"results: {out_dir}")
    job_started[0] = time.perf_counter()
    return summary["final_accuracy"]  # Hydra sweepers (e.g. Optuna) can optimise this


def check_command_line() -> None:
    """One line naming a mistyped key, group or option, before Hydra runs anything (exit 2)."""
    overrides = overrides_of(sys.argv[1:])
    verbose = any(o.lstrip("+").replace(" ", "") in ("verbose=true", "verbose=True") for o in overrides)
    try:
        check_overrides(overrides, Path(__file__).resolve().parent / "conf", verbose=verbose)
    except UserInputError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    check_command_line()
    main()
    # Every output is written and closed. Freezing the heap spares the interpreter's final
    # garbage collection a walk over torch's, Flower's and Ray's objects (~1.5 s at exit).
    gc.freeze()
