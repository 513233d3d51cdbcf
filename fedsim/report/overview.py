"""``overview.png``: every job of a sweep on one page, accuracy against rounds and simulated time.

Twenty runs compared by opening twenty ``accuracy.png`` files is not a comparison. This page
draws each job's test-accuracy curve in two panels (by round; by simulated minutes, what a fleet
would wait: :mod:`fedsim.fleet.clock`), one colour per *setting*: jobs whose overrides agree
except for the seed and result-irrelevant keys share a colour, as in the sweep report
(:mod:`fedsim.report.sweep`), and the legend names each setting by the overrides that set it
apart from the others. Curves come from each job's ``metrics.jsonl``, so a job still running or
interrupted is drawn with the rounds it finished.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedsim.report.plots import pyplot
from fedsim.report.run_log import read_records
from fedsim.report.sweep import (
    common_overrides, job_order, read_overrides, split_overrides, varying_label,
)

OVERVIEW = "overview.png"
# Matplotlib's "tab10" then "tab20b": distinct colours for up to 30 settings, then they repeat.
PALETTE = "tab10", "tab20b"


@dataclass(frozen=True)
class Curve:
    """One job's evaluated rounds."""

    run_dir: Path
    setting: tuple[str, ...]  # its result-relevant overrides without the seed
    seed: str
    rounds: tuple[int, ...]
    sim_minutes: tuple[float, ...]
    accuracy: tuple[float, ...]


def read_curve(metrics: Path) -> Curve:
    """The curve of the job whose ``metrics.jsonl`` is ``metrics``."""
    records = read_records(metrics)
    evaluated = [r for r in records if r.get("accuracy") is not None]
    setting, _, seed = split_overrides(read_overrides(metrics.parent))
    return Curve(
        run_dir=metrics.parent,
        setting=setting,
        seed="" if seed is None else str(seed),
        rounds=tuple(int(r["round"]) for r in evaluated),
        sim_minutes=tuple(float(r.get("sim_time_s", 0.0)) / 60 for r in evaluated),
        accuracy=tuple(float(r["accuracy"]) for r in evaluated),
    )


def find_curves(sweep_dir: Path, also: Iterable[Path] = ()) -> list[Curve]:
    """Every job under ``sweep_dir`` and the sweeps in ``also`` (pooled into one report, as
    :func:`fedsim.report.sweep.find_sweep_jobs` pools them) with at least one evaluated round,
    each sweep's jobs in its order, the first directory's first."""
    curves = []
    for directory in (sweep_dir, *also):
        paths = sorted(
            directory.rglob("metrics.jsonl"), key=lambda p: job_order(p.relative_to(directory))
        )
        curves += [read_curve(p) for p in paths]
    return [c for c in curves if c.rounds]


def setting_labels(curves: list[Curve]) -> dict[tuple[str, ...], str]:
    """Each setting's legend label: its overrides that not every job shares.

    >>> a = Curve(Path("0"), ("strategy=fedavg", "attack=sign_flip"), "0", (1,), (0.0,), (0.5,))
    >>> b = Curve(Path("1"), ("strategy=krum", "attack=sign_flip"), "0", (1,), (0.0,), (0.5,))
    >>> list(setting_labels([a, b]).values())
    ['strategy=fedavg', 'strategy=krum']
    """
    common = common_overrides(curve.setting for curve in curves)
    labels: dict[tuple[str, ...], str] = {}
    for curve in curves:
        labels.setdefault(curve.setting, varying_label(curve.setting, common))
    return labels


def colours(settings: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple]:
    """One colour per setting, in the order given."""
    plt = pyplot()
    palette = [c for name in PALETTE for c in plt.get_cmap(name).colors]
    return {setting: palette[i % len(palette)] for i, setting in enumerate(settings)}


def plot_overview(curves: list[Curve], path: Path, title: str) -> dict[tuple[str, ...], tuple]:
    """Draw ``curves`` into ``path``; return the colour of each setting.

    The legend sits under the panels with one entry per setting (and its number of seeds), so
    it never covers a curve and long override lists stay readable.
    """
    plt = pyplot()
    labels = setting_labels(curves)
    colour = colours(list(labels))
    seeds = {s: sum(c.setting == s for c in curves) for s in labels}
    fig, (by_round, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for curve in curves:
        style = dict(color=colour[curve.setting], linewidth=1.4, alpha=0.85)
        by_round.plot(curve.rounds, curve.accuracy, **style)
        by_time.plot(curve.sim_minutes, curve.accuracy, **style)
    by_round.set_xlabel("round")
    by_time.set_xlabel("simulated time (min)")
    by_round.set_ylabel("test accuracy")
    by_round.set_ylim(0, 1)
    for ax in (by_round, by_time):
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D([], [], color=colour[s], linewidth=2,
                   label=f"{labels[s]}  ({seeds[s]} run{'s' if seeds[s] > 1 else ''})")
        for s in labels
    ]
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    # Under the panels, outside them; bbox_inches="tight" grows the page to hold it.
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=2 if len(handles) > 1 else 1, fontsize=8, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return colour


def write_overview(sweep_dir: Path, also: Iterable[Path] = ()) -> list[Curve]:
    """Write ``overview.png`` of ``sweep_dir`` and the sweeps in ``also`` into ``sweep_dir``;
    return the curves drawn."""
    curves = find_curves(sweep_dir, also)
    if not curves:
        raise FileNotFoundError(f"{sweep_dir}: no run with an evaluated round (metrics.jsonl)")
    settings = len(setting_labels(curves))
    plot_overview(
        curves, sweep_dir / OVERVIEW,
        f"{sweep_dir}: {len(curves)} runs, {settings} setting{'s' if settings > 1 else ''}",
    )
    return curves
