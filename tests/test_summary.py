"""summary.json's accuracy figures: final, best and the mean of the last k evaluations."""

import doctest

import fedsim.report.summary as summary_module
from fedsim.report.run_log import RoundRecord
from fedsim.report.summary import LAST_K, summarize


def record(server_round: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(round=server_round, accuracy=accuracy, loss=0.0, train_loss=0.0,
                       sampled=1, completed=1, failed=0)


def test_last_k_averages_the_last_evaluations_only():
    # evaluated every other round: the last five evaluations are rounds 4, 6, 8, 10, 12
    records = [record(r, r / 20 if r % 2 == 0 else None) for r in range(1, 13)]
    summary = summarize(records, seed=0, population=1, clients_per_round=1, wall_s=0.0)
    assert LAST_K == 5 and summary["last_k"] == 5
    assert summary["last_k_accuracy"] == (0.2 + 0.3 + 0.4 + 0.5 + 0.6) / 5
    assert summary["final_accuracy"] == 0.6 and summary["best_round"] == 12


def test_a_short_run_averages_what_it_has():
    summary = summarize([record(1, 0.2), record(2, 0.4)], seed=0, population=1,
                        clients_per_round=1, wall_s=0.0)
    assert summary["last_k"] == 2 and abs(summary["last_k_accuracy"] - 0.3) < 1e-12


def test_no_evaluation_gives_none():
    summary = summarize([record(1, None)], seed=0, population=1, clients_per_round=1, wall_s=0.0)
    assert summary["last_k_accuracy"] is None and summary["last_k"] == 0


def test_the_docstring_examples_hold():
    assert doctest.testmod(summary_module).failed == 0
