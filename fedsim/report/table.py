"""The sweep report's tables: ``tradeoff.csv`` (every column) and ``tradeoff.md`` (to read).

Both come from the rows of :mod:`fedsim.report.rows`. The CSV has one column per figure and
statistic (``<figure>_mean``, ``<figure>_std``, ``<figure>_ci_lo``/``_hi``) so a reader can
re-plot anything; the markdown table shows ``mean ± std`` and leaves out the columns no row
has (a sweep without DP has no ε columns).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsim.report.rows import INTERVALS, METRICS, Row
from fedsim.report.summary import LAST_K


def _number(value: float | None) -> str:
    """A CSV cell: full precision, ``inf``, or empty for no value."""
    return "" if value is None else repr(float(value))


def csv_columns() -> list[str]:
    """The CSV header."""
    columns = ["setting", "overrides", "seeds", "seed_list", "privacy", "noise_multiplier",
               "delta", "deployment", "audit", "last_k"]
    for key in METRICS:
        columns += [f"{key}_mean", f"{key}_std"]
        if key in INTERVALS:
            columns += [f"{key}_ci_lo", f"{key}_ci_hi"]
    return columns


def csv_record(row: Row) -> dict[str, str]:
    """One CSV line of ``row``."""
    record = {
        "setting": row.label, "overrides": " ".join(row.setting), "seeds": str(len(row.seeds)),
        "seed_list": " ".join(str(s) for s in row.seeds), "privacy": row.privacy,
        "noise_multiplier": _number(row.noise_multiplier), "delta": _number(row.delta),
        "deployment": row.deployment.note if row.deployment else "", "audit": row.audit,
        "last_k": "" if row.last_k is None else str(row.last_k),
    }
    for key in METRICS:
        stat = row.stat(key)
        record[f"{key}_mean"] = _number(stat.mean if stat else None)
        record[f"{key}_std"] = _number(stat.std if stat else None)
        if key in INTERVALS:
            lo, hi = row.intervals.get(key, (None, None))
            record[f"{key}_ci_lo"], record[f"{key}_ci_hi"] = _number(lo), _number(hi)
    return record


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_columns())
        writer.writeheader()
        for row in rows:
            writer.writerow(csv_record(row))


def short(value: float | None, digits: int = 3) -> str:
    """A number for a reader: ``digits`` significant digits, ∞, or — for none.

    >>> short(2.5), short(None), short(math.inf), short(0.000123)
    ('2.5', '—', '∞', '0.000123')
    """
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def spread(row: Row, key: str, decimals: int | None = None, scale: float = 1.0) -> str:
    """``mean ± std`` of a figure (fixed ``decimals``, or 3 significant digits); ``—`` if none.

    The ± is left out when every seed gave the same value (ε of a deterministic accountant).
    """
    stat = row.stat(key)
    if stat is None:
        return "—"
    mean, std = stat.mean / scale, stat.std / scale
    if math.isinf(mean):
        return "∞"

    def text(v: float) -> str:
        return f"{v:.{decimals}f}" if decimals is not None else short(v)

    # Equal values can still give a std of 1e-16 (the mean's float rounding): that is zero.
    if std <= 1e-9 * max(1.0, abs(mean)) and key.startswith("epsilon"):
        return text(mean)
    return f"{text(mean)} ± {text(std)}"


def with_interval(row: Row, key: str) -> str:
    """``mean ± std [lo, hi]`` of an audit figure and its confidence interval."""
    cell = spread(row, key, decimals=3)
    if key in row.intervals:
        lo, hi = row.intervals[key]
        cell += f" [{lo:.3f}, {hi:.3f}]"
    return cell


def last_k_cell(row: Row, last_k: int) -> str:
    """The last-k accuracy, saying k when a run made fewer than ``last_k`` evaluations."""
    cell = spread(row, "last_k_accuracy", 4)
    if row.last_k is not None and row.last_k < last_k:
        cell += f" (k={row.last_k})"
    return cell


@dataclass(frozen=True)
class Column:
    """A markdown column: its header, its cell, and the summary figure that makes it appear."""

    header: str
    cell: Callable[[Row], str]
    shown_if: str | None = None  # a METRICS key some row must have; None: always shown
    interval: str | None = None  # an INTERVALS key: the header says [CI] when a row has one

    def title(self, rows: list[Row]) -> str:
        with_ci = self.interval and any(self.interval in r.intervals for r in rows)
        return self.header + (" [CI]" if with_ci else "")


def markdown_columns(last_k: int) -> tuple[Column, ...]:
    return (
        Column("setting", lambda r: f"`{r.label}`"),
        Column("seeds", lambda r: str(len(r.seeds))),
        Column("deployment", lambda r: r.deployment.note if r.deployment else "no DP",
               shown_if="epsilon"),
        Column("z", lambda r: short(r.noise_multiplier), shown_if="epsilon"),
        Column("ε", lambda r: spread(r, "epsilon"), shown_if="epsilon"),
        Column("ε simulated", lambda r: spread(r, "epsilon_simulated"),
               shown_if="epsilon_simulated"),
        Column("δ", lambda r: short(r.delta), shown_if="epsilon"),
        Column("final accuracy", lambda r: spread(r, "final_accuracy", 4)),
        Column(f"last-{last_k} accuracy", lambda r: last_k_cell(r, last_k),
               shown_if="last_k_accuracy"),
        Column("best accuracy", lambda r: spread(r, "best_accuracy", 4),
               shown_if="best_accuracy"),
        Column("MIA AUC", lambda r: with_interval(r, "mia_auc"), shown_if="mia_auc",
               interval="mia_auc"),
        Column("TPR at 1% FPR", lambda r: with_interval(r, "mia_tpr_at_fpr_0.01"),
               shown_if="mia_tpr_at_fpr_0.01", interval="mia_tpr_at_fpr_0.01"),
        Column("sim. time (min)", lambda r: spread(r, "sim_time_s", scale=60.0),
               shown_if="sim_time_s"),
        Column("up (MB)", lambda r: spread(r, "bytes_up", scale=1e6), shown_if="bytes_up"),
        Column("down (MB)", lambda r: spread(r, "bytes_down", scale=1e6), shown_if="bytes_down"),
        Column("energy (kJ)", lambda r: spread(r, "energy_j", scale=1e3), shown_if="energy_j"),
    )


def markdown_table(rows: list[Row], last_k: int = LAST_K) -> list[str]:
    """The table's lines; a column appears when some row has its figure."""
    columns = [c for c in markdown_columns(last_k)
               if c.shown_if is None or any(r.stat(c.shown_if) for r in rows)]
    lines = ["| " + " | ".join(c.title(rows) for c in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(c.cell(row).replace("|", "\\|") for c in columns) + " |")
    return lines


def header_lines(
    rows: list[Row], title: str, common: tuple[str, ...], ignored: tuple[str, ...], last_k: int
) -> list[str]:
    """What every row shares and how to read the figures (those the table has)."""
    lines = [
        f"# {title}", "",
        "Every run: `" + (" ".join(common) or "(config defaults)") + "`; each row adds the "
        "overrides in `setting` and averages its runs over `simulation.seed` (`seeds` of them).",
    ]
    if ignored:
        lines.append("Left out of the settings as result-irrelevant "
                     "(`fedsim.report.sweep.IGNORED_KEYS`): `" + " ".join(ignored) + "`.")
    lines += [
        "",
        f"Figures are mean ± sample std (ddof 1; ± 0 for one seed). Accuracy is on the test "
        f"split: *final* at the last evaluated round, *last-{last_k}* the mean of the last "
        f"{last_k} evaluations (`LAST_K` in `fedsim/report/summary.py`; fewer if a run made "
        f"fewer), *best* the maximum over evaluations.",
    ]
    if any(r.deployment is not None for r in rows):
        lines.append(
            "ε is accounted at δ for the deployment in its row (∞: DP clipping without noise); "
            "*ε simulated* is the ε of the noise the simulated phones got, which differs from ε "
            "when the run borrows a larger cohort's noise (`privacy.noise_cohort_size`)."
        )
    if any(r.stat("mia_auc") for r in rows):
        audits = sorted({r.audit for r in rows if r.stat("mia_auc") and r.audit})
        kind = f" (`audit={', '.join(audits)}`)" if audits else ""
        lines.append(
            f"MIA: membership inference on the final model{kind}, AUC 0.5 = chance; "
            "[CI] the audit's confidence interval, bounds averaged over seeds."
        )
    return lines + [""]


def write_markdown(
    rows: list[Row], path: Path, title: str, common: tuple[str, ...],
    ignored: tuple[str, ...] = (),
) -> None:
    lines = header_lines(rows, title, common, ignored, LAST_K) + markdown_table(rows, LAST_K)
    path.write_text("\n".join(lines) + "\n")
