"""The sweep report of a Hydra multirun: ``tradeoff.csv``, ``tradeoff.md`` and ``tradeoff.png``.

Written after every ``run_sim.py -m`` sweep (:class:`fedsim.report.callbacks.TradeoffReport`)
and by ``python -m fedsim.report DIR [DIR ...]``, for any sweep, private or not:

1. find the finished jobs and their settings (:mod:`fedsim.report.sweep`: the overrides minus
   the seed and the result-irrelevant keys);
2. average each setting over its seeds (:mod:`fedsim.report.rows`: mean ± sample std of every
   summary.json figure, DP rows tied to their deployment, :mod:`fedsim.report.deployment`);
3. write the table (:mod:`fedsim.report.table`) and the plot
   (:mod:`fedsim.report.tradeoff_plot`).

Everything in the outputs is re-derivable from the jobs' ``summary.json`` files.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.report.rows import Row, aggregate
from fedsim.report.sweep import common_overrides, find_sweep_jobs
from fedsim.report.table import write_csv, write_markdown
from fedsim.report.tradeoff_plot import plot_tradeoff

OUTPUTS = ("tradeoff.csv", "tradeoff.md", "tradeoff.png")


def write_report(sweep_dir: Path, also: tuple[Path, ...] = ()) -> list[Row]:
    """Write the three report files into ``sweep_dir``; return the rows.

    ``also``: more sweep directories whose jobs join the table (e.g. a separate non-private
    baseline sweep).
    """
    jobs = find_sweep_jobs(sweep_dir, also)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no finished runs (summary.json) found")
    rows = aggregate(jobs)
    common = common_overrides(job.setting for job in jobs)
    ignored = tuple(dict.fromkeys(o for job in jobs for o in job.ignored))
    write_csv(rows, sweep_dir / OUTPUTS[0])
    write_markdown(rows, sweep_dir / OUTPUTS[1], f"Sweep report: `{sweep_dir}`", common, ignored)
    common_text = " ".join(common) or "config defaults"
    plot_tradeoff(
        rows, sweep_dir / OUTPUTS[2],
        f"{sweep_dir}: {len(jobs)} runs, {len(rows)} settings; every run: {common_text}", common,
    )
    return rows
