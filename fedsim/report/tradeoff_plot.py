"""``tradeoff.png``: accuracy and membership-inference AUC of a sweep's settings.

With DP rows, both panels are drawn against epsilon on a log axis: one line per deployment
(:func:`fedsim.report.deployment.epsilon_lines`), final accuracy (circles, solid) and the mean
of the last k evaluations (squares, dashed) with error bars of the sample std over seeds, the
AUC with its std and, as a wide pale bar, the audit's confidence interval. Settings without a
finite epsilon (no DP; DP without noise) are horizontal reference lines with a band of ± one
std. A sweep without any finite epsilon (strategies, fleets, compression ...) is drawn as one
point per setting instead. Every y-axis is fitted to what it draws (:func:`fitted_limits`): a
fixed 0-1 axis makes 0.88 against 0.93 look flat. Legends sit under the panels, wrapped, never
cut.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedsim.report.deployment import epsilon_lines, has_finite_epsilon
from fedsim.report.plots import pyplot
from fedsim.report.rows import Row
from fedsim.report.summary import LAST_K

LEGEND_WIDTH = 110  # characters a legend line holds under an 11-inch figure at 8 pt
MAX_EPSILON_TICKS = 8  # more distinct ε values than this get matplotlib's own log ticks
MIN_LABEL_GAP = 0.08  # decades between labelled ε ticks: about one label's width
# (summary key, marker, line style, what it is) of the accuracy panel's two figures.
ACCURACY = (
    ("final_accuracy", "o", "-", "final accuracy"),
    ("last_k_accuracy", "s", "--", f"mean of the last {LAST_K} evaluations"),
)


def fitted_limits(
    values: Iterable[float | None], margin: float = 0.1, min_span: float = 0.02,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float]:
    """An axis range that holds ``values`` with ``margin`` of their span on each side.

    A span under ``min_span`` is widened to it (one value still gets a readable axis); the
    range never leaves ``bounds``.

    >>> [round(v, 4) for v in fitted_limits([0.88, 0.93])]
    [0.875, 0.935]
    >>> [round(v, 4) for v in fitted_limits([0.9])]
    [0.888, 0.912]
    >>> fitted_limits([0.02, 0.5, None])
    (0.0, 0.548)
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return bounds
    low, high = min(finite), max(finite)
    half = max(high - low, min_span) / 2 * (1 + 2 * margin)
    middle = (low + high) / 2
    return max(middle - half, bounds[0]), min(middle + half, bounds[1])


def wrap(label: str, width: int = LEGEND_WIDTH) -> str:
    """``label`` on lines of at most ``width`` characters (a longer override keeps its own
    line); no character is dropped.

    >>> wrap("privacy=central_dp privacy.noise_multiplier=1.0", 20)
    'privacy=central_dp\\nprivacy.noise_multiplier=1.0'
    """
    return textwrap.fill(label, width, break_long_words=False, break_on_hyphens=False)


def reference_name(row: Row) -> str:
    kind = "no DP" if row.epsilon is None else "DP without noise (ε = ∞)"
    return f"{kind}: {row.label}"


def _band(ax: Any, row: Row, key: str, colour: str, style: str) -> list[float]:
    """A reference row's horizontal line and ± std band; the values it spans."""
    stat = row.stat(key)
    if stat is None:
        return []
    ax.axhline(stat.mean, color=colour, linestyle=style, linewidth=1.3)
    ax.axhspan(stat.mean - stat.std, stat.mean + stat.std, color=colour, alpha=0.12, lw=0)
    return [stat.mean - stat.std, stat.mean + stat.std]


def _points(ax: Any, rows: tuple[Row, ...], key: str, colour: str, marker: str,
            style: str) -> list[float]:
    """A line's mean ± std against epsilon, its CI as a pale bar; the values it spans."""
    drawn = [r for r in rows if r.stat(key) is not None]
    if not drawn:
        return []
    x = [r.epsilon for r in drawn]
    means = [r.stat(key).mean for r in drawn]
    stds = [r.stat(key).std for r in drawn]
    ax.errorbar(x, means, yerr=stds, color=colour, marker=marker, linestyle=style, capsize=3,
                markersize=5)
    spans = [m - s for m, s in zip(means, stds)] + [m + s for m, s in zip(means, stds)]
    for r in drawn:
        if key in r.intervals:
            lo, hi = r.intervals[key]
            ax.vlines(r.epsilon, lo, hi, color=colour, alpha=0.25, linewidth=6)
            spans += [lo, hi]
    return spans


def spaced_labels(epsilons: list[float], gap: float = MIN_LABEL_GAP) -> list[str]:
    """Tick labels for sorted ``epsilons`` on a log axis; a value within ``gap`` decades of the
    last labelled one keeps its tick but not its label (0.59 and 0.664 would overprint).

    >>> spaced_labels([0.59, 0.664, 1.4, 7.62])
    ['0.59', '', '1.4', '7.62']
    """
    labels, last = [], -math.inf
    for e in epsilons:
        near = math.log10(e) - last < gap
        labels.append("" if near else f"{e:.3g}")
        last = last if near else math.log10(e)
    return labels


def plot_against_epsilon(rows: list[Row], axes: list[Any], common: tuple[str, ...]) -> list:
    """Draw every row into the accuracy (and AUC) panel; return the legend's handles."""
    plt = pyplot()
    lines = epsilon_lines(rows, common)
    references = [r for r in rows if not has_finite_epsilon(r)]
    handles = []
    panels = [(axes[0], ACCURACY)]
    if len(axes) > 1:
        panels.append((axes[1], (("mia_auc", "o", "-", "AUC"),)))
    spans: list[list[float]] = [[] for _ in panels]
    for i, line in enumerate(lines):
        colour = f"C{i % 10}"
        for (ax, figures), span in zip(panels, spans):
            for key, marker, style, _ in figures:
                span += _points(ax, line.rows, key, colour, marker, style)
        handles.append(plt.Line2D([], [], color=colour, marker="o", label=wrap(line.label)))
    for j, row in enumerate(references, len(lines)):
        colour = f"C{j % 10}"
        for (ax, figures), span in zip(panels, spans):
            for key, _, style, _ in figures:
                span += _band(ax, row, key, colour, style)
        handles.append(plt.Line2D([], [], color=colour, linewidth=6, alpha=0.4,
                                  label=wrap(reference_name(row))))
    epsilons = sorted({r.epsilon for line in lines for r in line.rows})
    for (ax, _), span in zip(panels, spans):
        ax.set_xscale("log")
        ax.set_xlabel("ε (log scale)")
        ax.set_ylim(*fitted_limits(span))
        if len(epsilons) <= MAX_EPSILON_TICKS:  # label the ε values drawn, not powers of ten
            ax.set_xticks(epsilons, spaced_labels(epsilons))
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0].set_ylabel("test accuracy")
    if len(axes) > 1:
        axes[1].set_ylabel("membership-inference AUC (0.5 = chance)")
        low, high = axes[1].get_ylim()
        if low <= 0.5 <= high:  # chance, when the fitted axis reaches it
            axes[1].axhline(0.5, color="grey", linestyle=":", linewidth=1)
    return handles


def plot_by_setting(rows: list[Row], axes: list[Any]) -> list:
    """Without a finite epsilon: one row of points per setting; return the legend's handles."""
    labels = [wrap(f"{r.label} ({len(r.seeds)} seed{'s' if len(r.seeds) > 1 else ''})", 40)
              for r in rows]
    y = list(range(len(rows)))
    panels = [(axes[0], ACCURACY)]
    if len(axes) > 1:
        panels.append((axes[1], (("mia_auc", "o", "-", "AUC"),)))
    for ax, figures in panels:
        span: list[float] = []
        for k, (key, marker, _, _) in enumerate(figures):
            drawn = [(i, r.stat(key)) for i, r in enumerate(rows) if r.stat(key) is not None]
            if not drawn:
                continue
            offset = 0.15 * k  # final and last-k side by side, not on top of each other
            ax.errorbar([s.mean for _, s in drawn], [i + offset for i, _ in drawn],
                        xerr=[s.std for _, s in drawn], fmt=marker, color="C0" if k == 0
                        else "C1", capsize=3)
            span += [s.mean - s.std for _, s in drawn] + [s.mean + s.std for _, s in drawn]
        ax.set_xlim(*fitted_limits(span))
        ax.set_yticks(y, labels if ax is axes[0] else [""] * len(y), fontsize=7)
        ax.invert_yaxis()  # the sweep's first setting on top, as in the table
    axes[0].set_xlabel("test accuracy")
    if len(axes) > 1:
        axes[1].set_xlabel("membership-inference AUC (0.5 = chance)")
    return []


def plot_tradeoff(
    rows: list[Row], path: Path, title: str, common: tuple[str, ...] = ()
) -> list[str]:
    """Draw ``rows`` into ``path``; return the legend's entries as drawn (wrapped)."""
    plt = pyplot()
    with_auc = any(r.stat("mia_auc") is not None for r in rows)
    by_epsilon = any(has_finite_epsilon(r) for r in rows)
    height = 4.2 if by_epsilon else max(3.0, 0.45 * len(rows) + 1.5)
    fig, axes = plt.subplots(1, 2 if with_auc else 1, figsize=(11 if with_auc else 7, height),
                             dpi=110, squeeze=False, sharex=by_epsilon)
    axes = list(axes[0])
    if by_epsilon:
        handles = plot_against_epsilon(rows, axes, common)
    else:
        handles = plot_by_setting(rows, axes)
    # What the marker and line styles mean, for every colour.
    for key, marker, style, name in ACCURACY:
        if any(r.stat(key) is not None for r in rows):
            colour = "grey" if by_epsilon else ("C0" if key == "final_accuracy" else "C1")
            handles.append(plt.Line2D([], [], color=colour, marker=marker,
                                      linestyle=style if by_epsilon else "", label=name))
    handles.append(plt.Line2D([], [], color="grey", marker="|", markersize=10, linestyle="",
                              label="error bars and bands: ± sample std over seeds"))
    if by_epsilon and any("mia_auc" in r.intervals for r in rows if has_finite_epsilon(r)):
        handles.append(plt.Line2D([], [], color="grey", alpha=0.3, linewidth=6,
                                  label="pale bar: the audit's AUC confidence interval, bounds "
                                  "averaged over seeds"))
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(wrap(title, 120), fontsize=9)
    fig.tight_layout()
    # Under the panels, outside them; bbox_inches="tight" grows the page to hold it.
    legend = fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                        ncol=1, fontsize=8, frameon=False)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return [text.get_text() for text in legend.get_texts()]
