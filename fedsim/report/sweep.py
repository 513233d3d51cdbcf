"""A sweep's finished jobs and the *setting* each belongs to.

Every job of a Hydra multirun leaves ``summary.json`` and ``.hydra/overrides.yaml`` in its
directory. A job's setting is its overrides minus the seed (:data:`SEED_KEY`: seeds make the
spread of a setting, not a new one) and minus the overrides that cannot change a result
(:data:`IGNORED_KEYS`). Jobs with one setting are averaged into one row of the sweep report
(:mod:`fedsim.report.rows`) and share one colour in the overview (:mod:`fedsim.report.overview`).
A setting is named by the overrides that not every job shares (an ``+experiment=<name>`` given
to the whole sweep is said once, in the report's header).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SEED_KEY = "simulation.seed"

# Overrides that change how a run is shown, logged, placed or restarted, never a figure of its
# summary.json, so jobs differing only in them are one setting. Each entry also covers its
# sub-keys (``logger`` covers ``logger.experiment``; ``hydra`` every ``hydra.*``).
# - progress, verbose, logger, report: display, experiment tracking and the sweep report;
# - resume: a resumed run reproduces the uninterrupted one (docs/reliability.md);
# - hydra: where the job's files go, the launcher;
# - simulation.backend, simulation.slots: Ray resources and execution slots; replies are
#   aggregated in phone-id order whatever order they arrive in (docs/performance.md);
# - simulation.checkpoint_every: how often state is saved;
# - simulation.eval_batch_size: the test split is evaluated in eval mode, so the batch size only
#   changes float summation order, not which predictions are right.
IGNORED_KEYS = (
    "progress", "verbose", "logger", "report", "resume", "hydra", "simulation.backend",
    "simulation.slots", "simulation.checkpoint_every", "simulation.eval_batch_size",
)


@dataclass(frozen=True)
class Job:
    """One finished job of a sweep."""

    run_dir: Path
    setting: tuple[str, ...]  # its result-relevant overrides, without the seed
    ignored: tuple[str, ...]  # its overrides in IGNORED_KEYS
    seed: int | None
    summary: dict[str, Any]
    order: tuple  # where it sits in the sweep (sweep directory, then Hydra's job number)


def override_key(override: str) -> str:
    """The config key an override sets (``+``, ``++`` and ``~`` prefixes removed).

    >>> override_key("++simulation.backend.num_cpus=2"), override_key("~logger")
    ('simulation.backend.num_cpus', 'logger')
    """
    return override.lstrip("+~").split("=", 1)[0]


def is_ignored(override: str, ignored: Iterable[str] = IGNORED_KEYS) -> bool:
    """Whether ``override`` sets a key in ``ignored`` or one of its sub-keys.

    >>> is_ignored("logger=mlflow"), is_ignored("logger.experiment=x"), is_ignored("loggers=1")
    (True, True, False)
    >>> is_ignored("hydra/launcher=basic"), is_ignored("simulation.rounds=3")
    (True, False)
    """
    key = override_key(override)
    return any(key == k or key.startswith((k + ".", k + "/")) for k in ignored)


def split_overrides(
    overrides: Iterable[str],
) -> tuple[tuple[str, ...], tuple[str, ...], int | None]:
    """``(setting, ignored, seed)`` of a job's overrides.

    >>> split_overrides(["+experiment=dp", "simulation.seed=2", "progress=lines"])
    (('+experiment=dp',), ('progress=lines',), 2)
    """
    setting, ignored, seed = [], [], None
    for override in overrides:
        if override_key(override) == SEED_KEY:
            seed = int(override.split("=", 1)[1])
        elif is_ignored(override):
            ignored.append(override)
        else:
            setting.append(override)
    return tuple(setting), tuple(ignored), seed


def read_overrides(run_dir: Path) -> list[str]:
    """The overrides Hydra saved for the job in ``run_dir`` (none for a job run by hand)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def job_order(path: Path) -> tuple:
    """Hydra's job directories in numeric order (2 before 10), so tables follow the sweep.

    >>> sorted([Path("10/m"), Path("2/m"), Path("b/m")], key=job_order)
    [PosixPath('2/m'), PosixPath('10/m'), PosixPath('b/m')]
    """
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def find_jobs(sweep_dir: Path, index: int = 0) -> list[Job]:
    """Every job under ``sweep_dir`` that finished (its ``summary.json`` has an accuracy).

    ``index`` orders jobs of several pooled sweep directories: the first directory's come first.
    """
    jobs = []
    for summary_path in sweep_dir.rglob("summary.json"):
        summary = json.loads(summary_path.read_text())
        if summary.get("final_accuracy") is None:
            continue  # killed before its first evaluation, or still running
        run_dir = summary_path.parent
        setting, ignored, seed = split_overrides(read_overrides(run_dir))
        if summary.get("seed") is not None:
            seed = int(summary["seed"])  # what the run used, even when set in a config file
        order = (index, job_order(run_dir.relative_to(sweep_dir)))
        jobs.append(Job(run_dir, setting, ignored, seed, summary, order))
    return sorted(jobs, key=lambda job: job.order)


def find_sweep_jobs(sweep_dir: Path, also: Iterable[Path] = ()) -> list[Job]:
    """The finished jobs of ``sweep_dir`` and of the sweeps in ``also`` (e.g. a separate
    baseline sweep), the first directory's first."""
    return [job for i, directory in enumerate((sweep_dir, *also))
            for job in find_jobs(directory, i)]


def common_overrides(settings: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """The overrides every setting has, in the first setting's order.

    >>> common_overrides([("+experiment=dp", "z=1"), ("z=2", "+experiment=dp")])
    ('+experiment=dp',)
    """
    settings = list(settings)
    if not settings:
        return ()
    shared = set(settings[0]).intersection(*settings[1:])
    return tuple(o for o in settings[0] if o in shared)


def varying_label(setting: tuple[str, ...], common: tuple[str, ...]) -> str:
    """A setting's name: its overrides that not every job shares.

    >>> varying_label(("+experiment=dp", "z=1"), ("+experiment=dp",))
    'z=1'
    >>> varying_label(("+experiment=dp",), ("+experiment=dp",))
    '(common overrides only)'
    """
    return " ".join(o for o in setting if o not in common) or "(common overrides only)"
