"""Privacy/accuracy trade-off report of a Hydra multirun: ``tradeoff.csv``, ``.md`` and ``.png``.

Every job of a sweep leaves ``summary.json`` and ``.hydra/overrides.yaml`` in its directory.
Jobs whose overrides agree except for ``simulation.seed`` are one *setting*; a setting's row
gives the mean and sample standard deviation over its seeds of the final accuracy and of the
membership-inference AUC, next to its epsilon (a function of the config, so the same for every
seed). The plot draws accuracy and AUC against epsilon on a log axis; settings without a finite
epsilon (``privacy=none``, or DP with zero noise) are drawn as horizontal reference lines.

Everything in the outputs is re-derivable from the jobs' ``summary.json`` files.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedsim.report.plots import pyplot

SEED_KEY = "simulation.seed"
OUTPUTS = ("tradeoff.csv", "tradeoff.md", "tradeoff.png")


@dataclass(frozen=True)
class Job:
    """One finished job of the sweep."""

    setting: tuple[str, ...]  # its overrides without the seed
    seed: int
    summary: dict[str, Any]


@dataclass(frozen=True)
class Row:
    """One setting, aggregated over its seeds."""

    setting: str
    privacy: str
    noise_multiplier: float | None
    epsilon: float | None  # inf: a DP mechanism without noise; None: no DP at all
    delta: float | None
    seeds: int
    accuracy_mean: float
    accuracy_std: float
    mia_auc_mean: float | None
    mia_auc_std: float | None
    epsilon_is_for: str


def find_jobs(sweep_dir: Path) -> list[Job]:
    """Every job under ``sweep_dir`` that finished (has ``summary.json`` with an accuracy)."""
    jobs = []
    for summary_path in sorted(sweep_dir.rglob("summary.json")):
        overrides_path = summary_path.parent / ".hydra" / "overrides.yaml"
        summary = json.loads(summary_path.read_text())
        if summary.get("final_accuracy") is None:
            continue
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        setting = tuple(o for o in overrides or [] if not o.lstrip("+~").startswith(SEED_KEY + "="))
        jobs.append(Job(setting, int(summary.get("seed", 0)), summary))
    return jobs


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def common_overrides(jobs: list[Job]) -> tuple[str, ...]:
    """Overrides every job shares; rows are labelled by the rest."""
    shared = set(jobs[0].setting) if jobs else set()
    for job in jobs[1:]:
        shared &= set(job.setting)
    return tuple(o for o in jobs[0].setting if o in shared) if jobs else ()


def aggregate(jobs: list[Job]) -> list[Row]:
    """One :class:`Row` per setting, sorted from the weakest privacy to the strongest."""
    shared = set(common_overrides(jobs))
    by_setting: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        by_setting.setdefault(job.setting, []).append(job)
    rows = []
    for setting, group in by_setting.items():
        first = group[0].summary
        accuracy = mean_std([j.summary["final_accuracy"] for j in group])
        aucs = [j.summary["mia_auc"] for j in group if j.summary.get("mia_auc") is not None]
        auc = mean_std(aucs) if aucs else (None, None)
        epsilons = [j.summary.get("epsilon") for j in group]
        dp = first.get("privacy", "none") != "none"
        epsilon = float(np.mean([math.inf if e is None else e for e in epsilons])) if dp else None
        rows.append(
            Row(
                setting=" ".join(o for o in setting if o not in shared) or "(shared only)",
                privacy=first.get("privacy", "none"),
                noise_multiplier=first.get("noise_multiplier"),
                epsilon=epsilon,
                delta=first.get("delta"),
                seeds=len(group),
                accuracy_mean=accuracy[0],
                accuracy_std=accuracy[1],
                mia_auc_mean=auc[0],
                mia_auc_std=auc[1],
                epsilon_is_for=first.get("epsilon_is_for", "this run") if dp else "",
            )
        )

    def order(row: Row) -> tuple[bool, float, str]:  # no DP, then epsilon from large to small
        return (row.epsilon is not None, -(row.epsilon or 0.0), row.setting)

    return sorted(rows, key=order)


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def write_markdown(rows: list[Row], path: Path, sweep_dir: Path, shared: tuple[str, ...]) -> None:
    lines = [
        f"# Privacy/accuracy trade-off: `{sweep_dir}`",
        "",
        "Every run: `" + (" ".join(shared) or "(config defaults)") + "`; each row adds its own "
        "overrides and is averaged over `simulation.seed`.",
        "",
        ("Mean ± sample std over seeds of the final test accuracy and of the client-level "
        "membership-inference AUC (0.5 = chance). ε is the run's user-level ε at δ "
        "(∞: DP clipping without noise; —: no DP)."),
        "",
        "| setting | privacy | z | ε | δ | seeds | accuracy | MIA AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        auc = "—" if r.mia_auc_mean is None else f"{r.mia_auc_mean:.3f} ± {r.mia_auc_std:.3f}"
        lines.append(
            f"| `{r.setting}` | {r.privacy} | {_fmt(r.noise_multiplier)} | {_fmt(r.epsilon)} | "
            f"{_fmt(r.delta)} | {r.seeds} | {r.accuracy_mean:.4f} ± {r.accuracy_std:.4f} | {auc} |"
        )
    notes = sorted({r.epsilon_is_for for r in rows if r.epsilon_is_for not in ("", "this run")})
    if notes:
        lines += ["", *(f"Note: {n}." for n in notes)]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Accuracy and MIA AUC against epsilon (log axis); no-epsilon settings as lines."""
    finite = [r for r in rows if r.epsilon is not None and math.isfinite(r.epsilon)]
    references = [r for r in rows if r not in finite]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    panels = (
        (axes[0], "accuracy_mean", "accuracy_std", "final test accuracy"),
        (axes[1], "mia_auc_mean", "mia_auc_std", "membership-inference AUC"),
    )
    for ax, mean_key, std_key, label in panels:
        points = [r for r in finite if getattr(r, mean_key) is not None]
        if points:
            ax.errorbar(
                [r.epsilon for r in points], [getattr(r, mean_key) for r in points],
                yerr=[getattr(r, std_key) for r in points], marker="o", capsize=3, label="DP",
            )
            ax.set_xscale("log")
        for i, r in enumerate(references):
            if getattr(r, mean_key) is None:
                continue
            name = "non-private baseline" if r.epsilon is None else "clipping only (ε=∞)"
            ax.axhline(getattr(r, mean_key), linestyle="--", color=f"C{i + 1}",
                       label=f"{name}: {r.setting}"[:60])
        if mean_key == "mia_auc_mean":
            ax.axhline(0.5, color="grey", linestyle=":", label="chance")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("ε (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(sweep_dir: Path, also: tuple[Path, ...] = ()) -> list[Row]:
    """Write the three report files into ``sweep_dir``; return the rows.

    ``also``: more sweep directories whose jobs join the table (e.g. a separate non-private
    baseline sweep).
    """
    jobs = [job for directory in (sweep_dir, *also) for job in find_jobs(directory)]
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no finished runs (summary.json) found")
    rows = aggregate(jobs)
    write_csv(rows, sweep_dir / OUTPUTS[0])
    write_markdown(rows, sweep_dir / OUTPUTS[1], sweep_dir, common_overrides(jobs))
    plot(rows, sweep_dir / OUTPUTS[2], f"privacy/accuracy trade-off ({len(jobs)} runs)")
    return rows
