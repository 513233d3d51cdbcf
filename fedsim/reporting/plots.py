"""``accuracy.png``: test accuracy per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt

from fedsim.reporting.run_log import RoundRecord


def plot_accuracy(records: list[RoundRecord], path: Path, title: str) -> None:
    """Accuracy of the global model at every evaluated round."""
    points = [(r.round, r.accuracy) for r in records if r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    if points:
        rounds, accuracy = zip(*points, strict=True)
        ax.plot(rounds, accuracy, marker="o", markersize=3)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
