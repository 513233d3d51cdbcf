"""The tracker interface (``logger=none``), the scalars every tracker logs per round, and the guard
that keeps a tracker's failure from costing a run.

An option of the ``logger`` group is a frozen settings class (a :class:`Tracker`); ``open``
returns the live :class:`TrackerSession` of one run, which receives every
:class:`~fedsim.report.run_log.RoundRecord` as the run appends it to ``metrics.jsonl``, and the
summary at the end. What is logged is :func:`round_scalars`, the same for every tool.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fedsim.errors import ConfigError
from fedsim.report.run_log import RoundRecord

# The device simulation's drop reasons (fedsim/fleet/admission.py, settlement.py): logged every
# round, 0 when none, so that each is one unbroken curve rather than points where it happened.
DROP_REASONS = ("offline", "oom", "straggler", "overcommit")


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker is told about the run it tracks.

    ``overrides``: the job's command-line overrides (Hydra's ``.hydra/overrides.yaml``);
    ``config_yaml``: the composed config; ``first_round``: 1, or the round a resumed run
    continues with (a tracker discards what an earlier session logged from there on).
    """

    run_dir: Path
    config_yaml: str
    overrides: tuple[str, ...] = ()
    first_round: int = 1


def metric_name(name: str) -> str:
    """A name both TensorBoard tags and MLflow keys accept (``[A-Za-z0-9_.\\-/]``).

    >>> metric_name("tiers/low_end/trained/full@8")
    'tiers/low_end/trained/full_batch8'
    """
    return re.sub(r"[^\w.\-/]", "_", name.replace("@", "_batch"))


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """One round's figures under the names every tracker logs them (grouped by their prefix).

    Unevaluated rounds have no ``test/*``, runs without DP no ``privacy/*``; drops are logged
    for every reason in :data:`DROP_REASONS` (0 when none), failures and per-tier drops for the
    reasons that occurred.

    Examples
    --------
    >>> r = RoundRecord(round=3, accuracy=0.5, loss=1.25, train_loss=0.75, sampled=4,
    ...                 completed=2, failed=1, failures={"timeout": 1}, dropped={"oom": 1},
    ...                 sim_time_s=90.0, energy_j=12.5, bytes_up=100, bytes_down=400,
    ...                 tiers={"mid": {"sampled": 4, "trained": {"full@8": 2},
    ...                                "dropped": {"oom": 1}}})
    >>> s = round_scalars(r)
    >>> s["test/accuracy"], s["dropped/oom"], s["dropped/offline"], s["failures/timeout"]
    (0.5, 1.0, 0.0, 1.0)
    >>> s["tiers/mid/sampled"], s["tiers/mid/trained/full_batch8"], s["tiers/mid/dropped/oom"]
    (4.0, 2.0, 1.0)
    >>> "privacy/epsilon" in s
    False
    """
    scalars: dict[str, float | None] = {
        "test/accuracy": record.accuracy,
        "test/loss": record.loss,
        "train/loss": record.train_loss,
        "privacy/epsilon": record.epsilon,
        "privacy/clipping_norm": record.clipping_norm,
        "traffic/bytes_up": record.bytes_up,
        "traffic/bytes_down": record.bytes_down,
        "time/sim_time_s": record.sim_time_s,
        "time/round_sim_s": record.round_sim_s,
        "time/round_wall_s": record.wall_s,
        "energy/energy_j": record.energy_j,
        "clients/sampled": record.sampled,
        "clients/completed": record.completed,
        "clients/failed": record.failed,
        "clients/num_examples": record.num_examples,
    }
    for reason in (*DROP_REASONS, *sorted(set(record.dropped) - set(DROP_REASONS))):
        scalars[f"dropped/{reason}"] = record.dropped.get(reason, 0)
    for reason, count in sorted(record.failures.items()):
        scalars[f"failures/{reason}"] = count
    for tier, entry in sorted(record.tiers.items()):
        scalars[f"tiers/{tier}/sampled"] = entry.get("sampled", 0)
        for part in ("trained", "dropped", "no_kd"):
            for label, count in sorted(entry.get(part, {}).items()):
                scalars[f"tiers/{tier}/{part}/{label}"] = count
    return {metric_name(k): float(v) for k, v in scalars.items() if v is not None}


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's top-level numbers (``final_accuracy``, ``total_s``, ...) as ``summary/*``."""
    return {
        metric_name(f"summary/{key}"): float(value) for key, value in summary.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def require(package: str, option: str) -> None:
    """Refuse ``logger=<option>`` in one line when its optional package is not installed."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger={option} needs the {package} package: pip install -e \".[{option}]\""
        )


class TrackerSession:
    """One run's live tracker; the base logs nothing."""

    def log_round(self, record: RoundRecord) -> None:
        """Log one finished round (called as the run appends it to metrics.jsonl)."""

    def close(self, summary: dict[str, Any]) -> None:
        """Log the run's summary and release what the session holds."""


@dataclass(frozen=True)
class Tracker:
    """``logger=none``: no experiment tracker, and the base of those that are."""

    name: ClassVar[str] = "none"

    def open(self, run: TrackedRun) -> TrackerSession:
        """Start tracking ``run``."""
        return TrackerSession()


class Tracking:
    """The run's side of a tracker: a failing tracker stops tracking, never the run.

    A tracker writes to a disk or a server that can fail (full, unreachable) while the run's
    own files are fine; such a failure is one line on stderr, and the run goes on untracked.
    """

    def __init__(self, tracker: Tracker, run: TrackedRun) -> None:
        self.name = tracker.name
        self.session: TrackerSession | None = None
        self._guarded(lambda: setattr(self, "session", tracker.open(run)))

    def log_round(self, record: RoundRecord) -> None:
        if self.session is not None:
            self._guarded(lambda: self.session.log_round(record))

    def close(self, summary: dict[str, Any]) -> None:
        if self.session is not None:
            self._guarded(lambda: self.session.close(summary))
            self.session = None

    def _guarded(self, call: Any) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - reported once; the run's files are unaffected
            self.session = None
            print(f"fedsim: logger={self.name} stopped tracking "
                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                  file=sys.stderr)


def tracked_run(cfg: Any, run_dir: Path, first_round: int = 1) -> TrackedRun:
    """The :class:`TrackedRun` of a composed config and the run directory Hydra made for it."""
    import yaml
    from omegaconf import OmegaConf

    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's app context resolves
        text = OmegaConf.to_yaml(cfg)
    return TrackedRun(run_dir, text, tuple(str(o) for o in overrides or ()), first_round)
