"""Rounds to a target accuracy, per setting of a sweep, and each setting's speed-up over a baseline.

The figure of McMahan et al. 2017 (Table 2: "number of communication rounds to reach a target
accuracy"): every job's ``summary.json`` has ``round_to_target``, the first evaluated round whose
accuracy reached ``simulation.target_accuracy`` (``null``: not within the run's rounds;
``simulation.stop_at_target`` ends a run there). Per setting (seeds pooled,
:mod:`fedsim.report.sweep`) the table gives how many seeds reached the target, the mean ± sample
std of their rounds and, when the jobs' config names a baseline override (``report.baseline``,
e.g. ``update.kind=gradient``), the speed-up: the baseline's mean rounds over the setting's, the
baseline being the setting with that override in place of the setting's own value of its key (so
FedAvg on IID data is compared with FedSGD on IID data). A speed-up needs every seed of both
settings to have reached the target; otherwise it is a bound (``>= x``) or not given.

Written beside the trade-off report (``rounds_to_target.md`` and ``.png``) when the sweep's jobs
have a target; everything in it is re-derivable from the jobs' ``summary.json`` files.

A lower target than the runs had can be read afterwards from each job's ``metrics.jsonl``
(``python -m fedsim.report DIR --target 0.7`` writes ``rounds_to_target_0.7.{md,png}``): a run
that stopped at its own target reached every lower one on the way, and a baseline that never
reached the runs' target may reach a lower one, which turns a lower bound on a speed-up into a
measured factor. A higher target than a run stopped at cannot be known and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsim.report.rows import Stat, mean_std
from fedsim.report.run_log import read_records
from fedsim.report.sweep import Job, common_overrides, override_key, varying_label

OUTPUTS = ("rounds_to_target.md", "rounds_to_target.png")


@dataclass(frozen=True)
class TargetRow:
    """One setting's rounds to the target over its seeds."""

    setting: tuple[str, ...]
    label: str
    rounds: tuple[int | None, ...]  # per seed; None: not reached within ``ran``, or diverged
    ran: int  # the most rounds a seed that missed the target ran (0: every seed reached it)
    final_accuracy: Stat
    diverged: tuple[int, ...] = ()  # the round each seed whose model became NaN stopped at

    @property
    def reached(self) -> int:
        """Seeds that reached the target."""
        return sum(r is not None for r in self.rounds)

    @property
    def stat(self) -> Stat | None:
        """Mean ± std of the rounds of the seeds that reached it (``None``: none did)."""
        done = [float(r) for r in self.rounds if r is not None]
        return mean_std(done) if done else None


def first_round_at(run_dir: Path, target: float) -> int | None:
    """The first evaluated round of ``run_dir/metrics.jsonl`` with accuracy >= ``target``."""
    for record in read_records(run_dir / "metrics.jsonl"):
        accuracy = record.get("accuracy")
        if accuracy is not None and accuracy >= target:
            return int(record["round"])
    return None


def reached_at(job: Job, target: float | None) -> int | None:
    """The round ``job`` first reached ``target`` (``None``: the runs' own target, from its
    summary); ``None`` if it did not."""
    if target is None:
        return job.summary.get("round_to_target")
    return first_round_at(job.run_dir, target)


def target_rows(jobs: Sequence[Job], target: float | None = None) -> list[TargetRow]:
    """One :class:`TargetRow` per setting, in sweep order, for ``target`` (``None``: the runs')."""
    by_setting: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        by_setting.setdefault(job.setting, []).append(job)
    common = common_overrides(by_setting)
    rows = []
    for setting, group in by_setting.items():
        group = sorted(group, key=lambda job: (job.seed is None, job.seed))
        rounds = tuple(reached_at(job, target) for job in group)
        missed = [job for job, reached in zip(group, rounds) if reached is None]
        diverged = tuple(int(job.summary.get("rounds") or 0) for job in missed
                         if job.summary.get("stopped") == "diverged")
        ran = [int(job.summary.get("rounds") or 0) for job in missed
               if job.summary.get("stopped") != "diverged"]
        rows.append(TargetRow(
            setting, varying_label(setting, common), rounds, max(ran, default=0),
            mean_std([float(job.summary["final_accuracy"]) for job in group]), diverged,
        ))
    return rows


def baseline_of(setting: tuple[str, ...], baseline: str) -> frozenset[str] | None:
    """The setting ``setting`` is compared with: its override of ``baseline``'s key replaced by
    ``baseline`` (``None`` when ``setting`` does not set that key).

    >>> sorted(baseline_of(("partition=iid", "+r@_global_=e5"), "+r@_global_=sgd"))
    ['+r@_global_=sgd', 'partition=iid']
    >>> baseline_of(("partition=iid",), "+r@_global_=sgd") is None
    True
    """
    key = override_key(baseline)
    if not any(override_key(o) == key for o in setting):
        return None
    return frozenset(baseline if override_key(o) == key else o for o in setting)


def speedup(row: TargetRow, base: TargetRow) -> tuple[float, str] | None:
    """``(factor, relation)``: ``base``'s mean rounds over ``row``'s, ``"="`` when every seed of
    both reached the target, ``">="`` when only the baseline missed (its rounds then count as
    the rounds it ran, so the factor is a lower bound); ``None`` when ``row`` missed it.

    >>> r = lambda *rounds, ran=0: TargetRow((), "", rounds, ran, Stat(0.8, 0.0, len(rounds)))
    >>> speedup(r(2, 4), r(60, 90))
    (25.0, '=')
    >>> speedup(r(2, 4), r(60, None, ran=100))
    (26.666666666666668, '>=')
    >>> speedup(r(2, None, ran=50), r(60, 90)) is None
    True
    """
    if row.reached < len(row.rounds) or row.stat is None or base.diverged:
        return None
    base_rounds = [float(r) if r is not None else float(base.ran) for r in base.rounds]
    factor = (sum(base_rounds) / len(base_rounds)) / row.stat.mean
    return factor, "=" if base.reached == len(base.rounds) else ">="


def rounds_cell(row: TargetRow) -> str:
    """``12.3 ± 1.5`` over the seeds that reached it, ``> 100`` when none did; seeds whose model
    became NaN are named as diverged, not as slow.

    >>> rounds_cell(TargetRow((), "", (2, 3, None), 100, Stat(0.8, 0.0, 3)))
    '2.5 ± 0.7 (2 of 3; 1 not within 100)'
    >>> rounds_cell(TargetRow((), "", (None,), 0, Stat(0.1, 0.0, 1), diverged=(12,)))
    'diverged (round 12)'
    """
    stat = row.stat
    slow = len(row.rounds) - row.reached - len(row.diverged)
    notes = ([f"{slow} not within {row.ran}"] if slow else []) + (
        [f"{len(row.diverged)} diverged"] if row.diverged else []
    )
    if stat is None:
        if not slow:
            return f"diverged (round {', '.join(map(str, row.diverged))})"
        return f"> {row.ran}" + (f" ({'; '.join(notes[1:])})" if row.diverged else "")
    cell = f"{stat.mean:.1f} ± {stat.std:.1f}"
    if notes:
        cell += f" ({row.reached} of {len(row.rounds)}; {'; '.join(notes)})"
    return cell


def markdown(rows: list[TargetRow], target: float, baseline: str | None, title: str,
             common: tuple[str, ...],
             source: str = "`round_to_target` in each run's summary.json") -> list[str]:
    """The table's lines; ``source`` says where the rounds were read."""
    index = {frozenset(row.setting): row for row in rows}
    lines = [
        f"# {title}", "",
        f"Rounds until the global model's test accuracy first reached {target:g} "
        f"({source}), mean ± sample std over the seeds that "
        f"reached it; final accuracy is at each run's last round (with "
        f"`simulation.stop_at_target`, the round it reached the target). "
        f"Every run: {' '.join(common) or 'config defaults'}.",
    ]
    if baseline:
        lines.append(
            f"Speed-up: the mean rounds of the same setting with `{baseline}` over this setting's "
            "(>=: the baseline missed the target in some seed; its rounds run count instead)."
        )
    lines += ["", "| setting | seeds | rounds to target | speed-up | final accuracy |",
              "|---|---|---|---|---|"]
    for row in rows:
        peer = baseline_of(row.setting, baseline) if baseline else None
        base = index.get(peer) if peer is not None else None
        factor = speedup(row, base) if base is not None and base is not row else None
        shown = "baseline" if base is row else (
            f"{'' if factor[1] == '=' else '>= '}{factor[0]:.1f}x" if factor else "-"
        )
        final = row.final_accuracy
        lines.append(
            f"| {row.label} | {len(row.rounds)} | {rounds_cell(row)} | {shown} | "
            f"{final.mean:.4f} ± {final.std:.4f} |"
        )
    return lines


def plot(rows: list[TargetRow], baseline: str | None, path: Path, title: str) -> None:
    """Rounds to target per setting on a log axis, one colour per baseline group (the settings
    sharing everything but the baseline key), the seeds' spread as error bars, seeds that
    missed the target as a hollow triangle at the rounds they ran, and seeds whose model became
    NaN as a cross at the round they stopped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = override_key(baseline) if baseline else None
    groups: dict[tuple[str, ...], list[TargetRow]] = {}
    for row in rows:
        rest = tuple(o for o in row.setting if override_key(o) != key)
        groups.setdefault(rest, []).append(row)
    common = common_overrides(groups)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ticks: list[str] = []
    for i, (rest, members) in enumerate(groups.items()):
        colour = plt.get_cmap("tab10")(i % 10)
        for row in members:
            own = next((o for o in row.setting if override_key(o) == key), None)
            name = own.split("=", 1)[1] if own else row.label
            if name not in ticks:
                ticks.append(name)
            x = ticks.index(name) + (i - (len(groups) - 1) / 2) * 0.12
            stat = row.stat
            if stat is not None:
                ax.errorbar(x, stat.mean, yerr=stat.std, fmt="o", color=colour, capsize=3,
                            label=varying_label(rest, common) if row is members[0] else None)
            for stopped in row.diverged:  # the model became NaN there: a cross, no rounds
                ax.plot(x, stopped, marker="x", markersize=9, color=colour)
                ax.annotate("diverged", (x, stopped), (4, -10), textcoords="offset points",
                            fontsize=7, color=colour)
            if row.reached + len(row.diverged) < len(row.rounds):  # a miss: a hollow triangle
                missed = len(row.rounds) - row.reached - len(row.diverged)
                ax.plot(x, row.ran, marker="^", markersize=9, mfc="none", color=colour,
                        label=varying_label(rest, common) if stat is None and row is members[0]
                        else None)
                ax.annotate(f"{missed} of {len(row.rounds)} not reached", (x, row.ran),
                            (4, 6), textcoords="offset points", fontsize=7, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set_ylabel("rounds to target (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def configured_baseline(jobs: Sequence[Job]) -> str | None:
    """The first ``report.baseline`` set in the jobs' saved configs (one sweep sets it once)."""
    for job in jobs:
        config = job.run_dir / ".hydra" / "config.yaml"
        if not config.exists():
            continue
        saved: dict[str, Any] = yaml.safe_load(config.read_text()) or {}
        baseline = (saved.get("report") or {}).get("baseline")
        if baseline:
            return baseline
    return None


def outputs_for(target: float | None) -> tuple[str, str]:
    """The files a report for ``target`` writes (:data:`OUTPUTS` for the runs' own).

    >>> outputs_for(0.7)
    ('rounds_to_target_0.7.md', 'rounds_to_target_0.7.png')
    """
    if target is None:
        return OUTPUTS
    stem = f"rounds_to_target_{target:g}"
    return f"{stem}.md", f"{stem}.png"


def check_lower_target(jobs: Sequence[Job], target: float) -> None:
    """Refuse ``target`` if some job stopped at a lower target of its own: whether it would
    have reached this one is not known."""
    for job in jobs:
        own = job.summary.get("target_accuracy")
        if job.summary.get("stopped") == "target_reached" and own is not None and target > own:
            raise ValueError(
                f"--target {target:g}: {job.run_dir} stopped when it reached {own:g} "
                "(simulation.stop_at_target), so a higher target cannot be read from it"
            )


def write_rounds_to_target(
    sweep_dir: Path, jobs: Sequence[Job], baseline: str | None = None,
    target: float | None = None,
) -> list[TargetRow] | None:
    """Write the report into ``sweep_dir`` (:data:`OUTPUTS`, or :func:`outputs_for` ``target``)
    when every job has one target, or for ``target`` from the jobs' round logs; return the rows.

    ``baseline``: the override speed-ups are against; ``None``: the jobs' ``report.baseline``.
    """
    outputs = outputs_for(target)
    source = "`round_to_target` in each run's summary.json"
    if target is None:
        targets = {job.summary.get("target_accuracy") for job in jobs} - {None}
        if len(targets) != 1:
            return None
        shown = targets.pop()
    else:
        check_lower_target(jobs, target)
        shown, source = target, "the first such round in each run's metrics.jsonl"
    baseline = baseline or configured_baseline(jobs)
    rows = target_rows(jobs, target)
    common = common_overrides(row.setting for row in rows)
    title = f"Rounds to {shown:g} accuracy: `{sweep_dir}`, {len(jobs)} runs"
    lines = markdown(rows, shown, baseline, title, common, source)
    (sweep_dir / outputs[0]).write_text("\n".join(lines) + "\n")
    plot(rows, baseline, sweep_dir / outputs[1], f"{sweep_dir}: rounds to {shown:g} accuracy")
    return rows
