"""``accuracy.png``: test accuracy per round and against simulated time; and fedsim's one way
to get matplotlib."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from fedsim.report.run_log import RoundRecord


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use.

    Importing it costs ~0.4 s; a run only plots after its last round, so it is not paid
    during start-up (and Ray actors, which never plot, do not pay it at all).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(records: list[RoundRecord], path: Path, title: str) -> None:
    """Accuracy of the global model at every evaluated round, and at the simulated time the
    round ended (what a fleet would wait for it: :mod:`fedsim.fleet.clock`)."""
    plt = pyplot()
    evaluated = [r for r in records if r.accuracy is not None]
    fig, (by_round, by_time) = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    if evaluated:
        accuracy = [r.accuracy for r in evaluated]
        by_round.plot([r.round for r in evaluated], accuracy, marker="o", markersize=3)
        by_time.plot([r.sim_time_s / 60 for r in evaluated], accuracy, marker="o", markersize=3)
    by_round.set_xlabel("round")
    by_time.set_xlabel("simulated time (min)")
    by_round.set_ylabel("test accuracy")
    by_round.set_ylim(0, 1)
    for ax in (by_round, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
