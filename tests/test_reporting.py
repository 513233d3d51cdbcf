"""Round records, the summary derived from them, and the round tally."""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedsim import keys
from fedsim.report.run_log import RoundRecord, RunLog, read_records
from fedsim.report.summary import summarize
from fedsim.server.rounds import RoundPlan, tally, weighted_train_loss


def record(rnd: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(
        round=rnd, accuracy=accuracy, loss=None if accuracy is None else 1 - accuracy,
        train_loss=0.5, sampled=4, completed=3, failed=1, failures={"timeout": 1},
    )


def test_summary_final_is_last_evaluated_and_best_is_max() -> None:
    records = [record(1, 0.5), record(2, 0.8), record(3, None), record(4, 0.7)]
    summary = summarize(records, seed=3, population=100, clients_per_round=4, wall_s=12.5)
    assert summary["final_accuracy"] == 0.7
    assert summary["best_accuracy"] == 0.8 and summary["best_round"] == 2
    assert summary["rounds"] == 4
    assert summary["clients_completed"] == 12 and summary["clients_failed"] == 4
    assert summary["epsilon"] is None and summary["delta"] is None
    assert (summary["seed"], summary["population"], summary["clients_per_round"]) == (3, 100, 4)


def test_run_log_appends_one_json_line_per_round(tmp_path) -> None:
    log = RunLog(tmp_path / "metrics.jsonl")
    log.append(record(1, 0.5))
    log.append(record(2, None))
    rows = read_records(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[1]["accuracy"] is None and rows[0]["failures"] == {"timeout": 1}
    json.dumps(rows)  # plain JSON throughout


def test_plan_evaluates_every_n_and_the_last_round() -> None:
    plan = RoundPlan(rounds=7, eval_every=3, round_timeout_s=1.0, slots=1)
    assert [r for r in range(1, 8) if plan.evaluates(r)] == [3, 6, 7]


def test_plan_stops_only_at_an_evaluation_that_reaches_its_target() -> None:
    plan = RoundPlan(rounds=7, eval_every=1, round_timeout_s=1.0, slots=1, stop_at=0.8)
    assert [plan.reached(a) for a in (None, 0.79, 0.8, 0.95)] == [False, False, True, True]
    assert not RoundPlan(rounds=7, eval_every=1, round_timeout_s=1.0, slots=1).reached(1.0)


def sent(client_id: int) -> Message:
    content = RecordDict({"config": ConfigRecord({keys.CLIENT_ID: client_id})})
    msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = f"m{client_id}"
    return msg


def ok(to: Message, n: int, loss: float) -> Message:
    metrics = MetricRecord({keys.NUM_EXAMPLES: n, keys.TRAIN_LOSS: loss, keys.COMPUTE_S: 0.5})
    arrays = ArrayRecord({"w": Array(np.zeros(1, dtype=np.float32))})
    return Message(RecordDict({"arrays": arrays, keys.METRICS: metrics}), reply_to=to)


def test_tally_counts_completed_failed_and_timed_out() -> None:
    messages = [sent(i) for i in range(4)]
    replies = [
        ok(messages[0], 10, 1.0),
        ok(messages[1], 30, 2.0),
        Message(Error(code=2, reason="ValueError: boom"), reply_to=messages[2]),
    ]  # the fourth never answered
    outcome = tally(messages, replies)
    assert len(outcome.completed) == 2
    assert outcome.failures == {"client_exception": 1, "timeout": 1} and outcome.failed == 2
    # (10 * 1.0 + 30 * 2.0) / 40 = 1.75
    assert weighted_train_loss(outcome.completed) == (1.75, 40, 1.0)
