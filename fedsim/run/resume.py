"""``python run_sim.py resume=<run dir>``: the saved config, and which overrides may change.

A resumed run continues from the last checkpoint (or from the start, if it was killed before
its first round finished) with the configuration it was started with (``<run dir>/.hydra/
config.yaml``, which Hydra wrote at launch). An override on the resume command line is accepted
only if it cannot change a result: how the run is displayed or where Ray runs. Anything else is
refused with one line naming it, because a run whose first half used one config and second half
another is not a run anyone could reproduce.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError

SAVED_CONFIG = Path(".hydra") / "config.yaml"
# Overrides that leave every figure of a run unchanged (prefix match on the key).
HARMLESS = (
    "resume", "verbose", "progress", "hydra.", "simulation.backend.",
    "simulation.round_timeout_s", "simulation.checkpoint_every",
)


def override_key(override: str) -> str:
    """``a.b=c`` -> ``a.b`` (also for ``+a.b=c`` and ``~a.b``)."""
    return override.lstrip("+~").split("=", 1)[0]


def resume_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config to resume ``run_dir`` with: its saved config plus the harmless overrides."""
    if not (run_dir / SAVED_CONFIG).is_file():
        raise ConfigError(f"resume: {run_dir} is not a fedsim run directory (no {SAVED_CONFIG})")
    changes = []
    for override in overrides:
        key = override_key(override)
        if not any(key == h.rstrip(".") or key.startswith(h) for h in HARMLESS):
            raise ConfigError(
                f"resume: {override!r} would change the results; a resumed run keeps the config "
                f"it started with ({run_dir / SAVED_CONFIG})"
            )
        if key != "resume" and not key.startswith("hydra.") and not override.startswith("~"):
            changes.append(override.lstrip("+"))
    saved = OmegaConf.load(run_dir / SAVED_CONFIG)
    merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(changes))
    merged.resume = str(run_dir)
    return merged
