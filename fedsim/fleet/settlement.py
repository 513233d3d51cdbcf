"""After a round's replies: each phone on the simulated clock, the late and the over-selected.

:func:`settle` is a pure function of the round's admissions (:mod:`fedsim.fleet.admission`),
the messages sent and the replies that came back, and of a phone's clock
(:mod:`fedsim.fleet.clock`: download, compute for the chosen mode, upload of the bytes it
actually sent). A phone that finishes after ``simulation.deadline_s`` is dropped as
``straggler``. With over-selection (``simulation.overcommit``, as in FedScale, Lai et al.
ICML 2022) the server samples more phones than it needs and keeps the first
``clients_per_round`` to finish (:func:`keep_first_finishers`); the others are dropped as
``overcommit``. A round lasts until the deadline when someone missed it, otherwise until its
slowest kept phone finished. :func:`tier_report` is what the round record says per tier.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message

from fedsim import keys
from fedsim.fleet.admission import Admission
from fedsim.fleet.budget import TrainPlan
from fedsim.fleet.clock import ClientCost, round_duration

# (client id, plan, local epochs, bytes uploaded, distills) -> the phone's clock this round
Clock = Callable[[int, TrainPlan, int, int, bool], ClientCost]


@dataclass(frozen=True)
class DeviceRound:
    """The device side of one finished round."""

    kept: list[Message]  # the replies the strategy aggregates
    sampled: int
    dropped: dict[str, int]  # reason -> phones
    round_s: float  # simulated duration of this round
    energy_j: float  # spent by every phone that trained (kept, late or over-selected)
    tiers: dict[str, dict] = field(default_factory=dict)  # per tier: sampled, trained, dropped
    costs: dict[int, ClientCost] = field(default_factory=dict)  # kept phones' clocks


def keep_first_finishers(
    finished: list[tuple[float, int]], needed: int | None
) -> tuple[set[int], set[int]]:
    """Over-selection: the ``needed`` phones that finished first (ties by id), and the rest.

    ``needed=None`` (no over-selection) keeps everyone.
    """
    ordered = sorted(finished)
    cut = len(ordered) if needed is None else needed
    return {cid for _, cid in ordered[:cut]}, {cid for _, cid in ordered[cut:]}


def settle(
    admissions: Mapping[int, Admission], sent: list[Message], completed: list[Message],
    clock: Clock, epochs: int, deadline_s: float | None, needed: int | None,
) -> DeviceRound:
    """Clock the completed replies and drop the late and the over-selected.

    Parameters
    ----------
    admissions : mapping of int to Admission
        This round's, by client id (empty if the round was never admitted).
    sent, completed : list of Message
        The train messages sent and the replies that came back.
    clock : callable
        A phone's clock, ``(client id, plan, epochs, bytes up, distill) -> ClientCost``.
    epochs : int
        The run's local epochs, where a message does not say (a strategy may override them).
    deadline_s : float or None
        Simulated seconds a phone has.
    needed : int or None
        With over-selection, the phones to keep; ``None`` keeps all that finished in time.
    """
    dropped: Counter[str] = Counter(a.drop for a in admissions.values() if a.drop)
    told = {_client_id(m): int(_config(m).get(keys.LOCAL_EPOCHS, epochs)) for m in sent}
    energy = 0.0
    for a in admissions.values():
        if a.drop == "straggler":  # trained in vain until the deadline passed
            a_epochs = told.get(a.client_id, epochs)
            energy += clock(a.client_id, a.plan, a_epochs, 0, a.distill).energy_j
    costs: dict[int, ClientCost] = {}
    by_id: dict[int, Message] = {}
    for reply in completed:
        metrics = reply.content[keys.METRICS]
        cid = int(metrics[keys.CLIENT_ID])
        admission = admissions[cid]
        cost = clock(
            cid, admission.plan, told[cid], int(metrics[keys.PAYLOAD_BYTES]), admission.distill
        )
        costs[cid], by_id[cid] = cost, reply
    for cid in sorted(costs):  # in id order: replies arrive in any order, float sums must not
        energy += costs[cid].energy_j
    late = {cid for cid, c in costs.items() if deadline_s is not None and c.total_s > deadline_s}
    dropped["straggler"] += len(late)
    on_time = [(costs[cid].total_s, cid) for cid in sorted(costs) if cid not in late]
    kept_ids, extra = keep_first_finishers(on_time, needed)
    dropped["overcommit"] += len(extra)
    any_late = dropped["straggler"] > 0
    round_s = round_duration([costs[cid].total_s for cid in kept_ids], deadline_s, any_late)
    return DeviceRound(
        kept=[reply for cid, reply in sorted(by_id.items()) if cid in kept_ids],
        sampled=len(admissions) or len(sent),
        dropped={k: v for k, v in sorted(dropped.items()) if v},
        round_s=round_s, energy_j=energy,
        tiers=tier_report(admissions, kept_ids, late, extra),
        costs={cid: costs[cid] for cid in sorted(kept_ids)},
    )


def tier_report(
    admissions: Mapping[int, Admission], kept: set[int], late: set[int], extra: set[int]
) -> dict[str, dict]:
    """Per tier: phones sampled, kept phones per ``mode@batch``, and drops per reason.

    Phones that were sent but whose reply never came (errors, timeouts) count as sampled only;
    the round record's ``failures`` has their reasons. In a client-distillation run, a tier
    whose phones could not afford the teacher also has ``no_kd``: reason -> phones.
    """
    report: dict[str, dict] = defaultdict(
        lambda: {"sampled": 0, "trained": Counter(), "dropped": Counter(), "no_kd": Counter()}
    )
    for cid, a in sorted(admissions.items()):
        entry = report[a.tier]
        entry["sampled"] += 1
        if a.no_kd and not a.drop:
            entry["no_kd"][a.no_kd] += 1
        if a.drop:
            entry["dropped"][a.drop] += 1
        elif cid in late:
            entry["dropped"]["straggler"] += 1
        elif cid in extra:
            entry["dropped"]["overcommit"] += 1
        elif cid in kept:
            entry["trained"][a.label] += 1
    return {
        tier: {
            "sampled": e["sampled"],
            "trained": dict(sorted(e["trained"].items())),
            "dropped": dict(sorted(e["dropped"].items())),
            **({"no_kd": dict(sorted(e["no_kd"].items()))} if e["no_kd"] else {}),
        }
        for tier, e in sorted(report.items())
    }


def _config(message: Message) -> ConfigRecord:
    return next(iter(message.content.config_records.values()))


def _client_id(message: Message) -> int:
    return int(_config(message)[keys.CLIENT_ID])
