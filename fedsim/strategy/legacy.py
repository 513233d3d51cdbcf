"""Run a legacy Flower strategy (``flwr.server.strategy``) over fedsim's virtual phones.

Most Flower strategy code in the wild, and most Flower baselines, subclass the pre-Message-API
classes: ``configure_fit`` samples from a ``ClientManager`` and returns ``(ClientProxy,
FitIns)`` pairs, ``aggregate_fit`` reduces ``(ClientProxy, FitRes)`` pairs to ``Parameters``.
:class:`LegacyStrategy` is a Message-API strategy that runs one, so it sits where any user
strategy sits, innermost in fedsim's stack (:mod:`fedsim.strategy.stack`):

- ``configure_train`` hands the legacy strategy a :class:`CohortClientManager` whose sampling
  returns exactly the cohort fedsim's seeded sampler chose (one :class:`PhoneProxy` per
  virtual phone, ``cid`` its id), whatever number the strategy asks for: the strategy's own
  random choice never decides who trains. Each ``FitIns`` becomes one train message addressed
  to its phone (``fedsim.keys.CLIENT_ID``), so per-client instructions survive.
- ``aggregate_train`` builds one ``FitRes`` per reply (the decoded weights, ``num-examples``,
  the reply's metrics) paired with that phone's proxy, in phone-id order, errors as failures;
  the ``Parameters`` and metrics ``aggregate_fit`` returns come back as an ArrayRecord (the
  model's tensor names) and a MetricRecord (its numeric entries).
- The legacy ``evaluate`` hook runs where Flower's legacy server runs it: on the initial model
  (round 0) and after every aggregation; what it returns is logged and added to the round's
  metrics as ``evaluate-loss`` and ``evaluate-<name>``. fedsim's own central evaluation
  (``metrics.jsonl``) is unaffected. ``configure_evaluate`` is never called: evaluation is
  central.

What cannot be honoured is refused before the run starts (:func:`refusal`), in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server import strategy as legacy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import keys

log = logging.getLogger("fedsim")

# Legacy classes whose contract fedsim cannot honour, and why (subclasses inherit the entry).
REFUSED: dict[type, str] = {
    legacy.DifferentialPrivacyServerSideFixedClipping: "a legacy DP wrapper: its noise is not "
    "in fedsim's privacy accounting; use privacy=central_dp",
    legacy.DifferentialPrivacyServerSideAdaptiveClipping: "a legacy DP wrapper: its noise is "
    "not in fedsim's privacy accounting; use privacy=central_dp_adaptive",
    legacy.DifferentialPrivacyClientSideFixedClipping: "a legacy DP wrapper: it needs a "
    "ClientApp mod fedsim's phones do not run; use privacy=local_dp or central_dp",
    legacy.DifferentialPrivacyClientSideAdaptiveClipping: "a legacy DP wrapper: it needs a "
    "ClientApp mod fedsim's phones do not run; use privacy=central_dp_adaptive",
    legacy.DPFedAvgFixed: "a legacy DP wrapper: its noise is not in fedsim's privacy "
    "accounting; use privacy=central_dp",
    legacy.DPFedAvgAdaptive: "a legacy DP wrapper: its noise is not in fedsim's privacy "
    "accounting; use privacy=central_dp_adaptive",
    legacy.FedOpt: "it steps from its own copy of the model given as initial_parameters, but "
    "fedsim decides the starting model (pretrain, resume); use flwr.serverapp.strategy's class "
    "of the same name",
    legacy.FedAvgAndroid: "it reads parameters in the Android client's raw float32 format, not "
    "the numpy arrays fedsim's phones send",
    legacy.FedXgbBagging: "it aggregates XGBoost trees, not the student's tensors",
    legacy.FedXgbCyclic: "it aggregates XGBoost trees, not the student's tensors",
    legacy.FedXgbNnAvg: "it aggregates XGBoost trees, not the student's tensors",
}


def refusal(strategy: legacy.Strategy) -> str | None:
    """Why fedsim cannot run ``strategy`` (one clause), or ``None`` if it can."""
    for cls, reason in REFUSED.items():
        if isinstance(strategy, cls):
            return reason
    if getattr(strategy, "initial_parameters", None) is not None:
        return ("it was given initial_parameters, but fedsim decides the starting model "
                "(pretrain, resume)")
    if isinstance(strategy, legacy.FedAvgM) and (
        strategy.server_momentum != 0 or strategy.server_learning_rate != 1.0
    ):
        return ("its server momentum steps from initial_parameters, which fedsim's starting "
                "model replaces; use flwr.serverapp.strategy.FedAvgM")
    if isinstance(strategy, legacy.QFedAvg) and getattr(strategy, "evaluate_fn", None) is None:
        return "it weighs clients by the loss of its evaluate_fn, and none was given"
    return None


class PhoneProxy(ClientProxy):
    """A virtual phone as a legacy strategy sees it: ``cid`` is the phone's id. fedsim sends
    and receives every message itself, so a strategy that calls the proxy is refused."""

    def _transport(self, *args, **kwargs):
        raise RuntimeError("fedsim sends messages itself; a strategy must not call a ClientProxy")

    get_properties = get_parameters = fit = evaluate = reconnect = _transport


class CohortClientManager(ClientManager):
    """A ClientManager that holds this round's cohort and nothing else.

    ``sample`` returns the whole cohort in phone-id order, whatever ``num_clients`` asks for:
    who trains is decided by fedsim's seeded sampler (``simulation.clients_per_round``,
    ``simulation.sampling``), never by the strategy's own random choice.
    """

    def __init__(self, client_ids: Iterable[int]) -> None:
        self._proxies = {str(int(c)): PhoneProxy(str(int(c))) for c in sorted(client_ids)}

    def num_available(self) -> int:
        return len(self._proxies)

    def register(self, client: ClientProxy) -> bool:
        return False  # the cohort is fixed for the round

    def unregister(self, client: ClientProxy) -> None:
        return None

    def all(self) -> dict[str, ClientProxy]:
        return dict(self._proxies)

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return True  # nothing connects: the cohort is all there is

    def sample(self, num_clients: int, min_num_clients: int | None = None,
               criterion: object | None = None) -> list[ClientProxy]:
        return list(self._proxies.values())


def as_float(array: np.ndarray) -> np.ndarray:
    """Integer tensors as float64: legacy FedAvg averages in place, so an int64 buffer
    (BatchNorm's ``num_batches_tracked``) would be scaled by an integer factor, i.e. to 0."""
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.integer) else array


def to_parameters(arrays: ArrayRecord, names: list[str]) -> Parameters:
    """``arrays`` as legacy ``Parameters``: numpy arrays in ``names`` order, integers as floats."""
    return ndarrays_to_parameters([as_float(arrays[name].numpy()) for name in names])


def to_arrays(parameters: Parameters, like: ArrayRecord) -> ArrayRecord:
    """Legacy ``Parameters`` back into an ArrayRecord with ``like``'s names and dtypes."""
    ndarrays = parameters_to_ndarrays(parameters)
    if len(ndarrays) != len(like):
        raise ValueError(f"returned {len(ndarrays)} arrays for a model of {len(like)} tensors")
    return ArrayRecord({
        name: Array(np.asarray(a).astype(like[name].dtype, copy=False))
        for name, a in zip(like.keys(), ndarrays)
    })


def numeric(metrics: dict) -> MetricRecord:
    """The entries of a legacy metrics dict a MetricRecord can hold (numbers)."""
    return MetricRecord({
        str(k): v for k, v in metrics.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    })


class LegacyStrategy(Strategy):
    """A Message-API strategy that runs the legacy ``strategy`` (module docstring).

    Parameters
    ----------
    strategy : flwr.server.strategy.Strategy
        Any legacy strategy (stock or a user's subclass) that :func:`refusal` accepts.
    """

    def __init__(self, strategy: legacy.Strategy) -> None:
        self.strategy = strategy
        self._names: list[str] = []  # the model's tensor order, set each configure_train
        self._global: ArrayRecord | None = None  # the round's model: names and dtypes
        self._proxies: dict[int, ClientProxy] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._names, self._global = list(arrays.keys()), arrays
        parameters = to_parameters(arrays, self._names)
        if server_round == 1:
            self._evaluate(0, parameters)  # Flower's legacy server evaluates the initial model
        # VirtualClients' view carries the sampler's cohort; a plain grid's nodes stand in.
        cohort = getattr(grid, "cohort", None)
        manager = CohortClientManager(list(grid.get_node_ids()) if cohort is None else cohort)
        self._proxies = {int(cid): proxy for cid, proxy in manager.all().items()}
        node = next(iter(grid.get_node_ids()), 0)
        messages = []
        for proxy, fit_ins in self.strategy.configure_fit(server_round, parameters, manager):
            record = arrays if fit_ins.parameters is parameters else to_arrays(
                fit_ins.parameters, arrays
            )
            instructions = ConfigRecord(
                {**config, **fit_ins.config, keys.CLIENT_ID: int(proxy.cid)}
            )
            content = RecordDict({"arrays": record, "config": instructions})
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        results, failures = [], []
        for reply in replies:
            if reply.has_error():
                failures.append(RuntimeError(reply.error.reason))
                continue
            metrics = reply.content[keys.METRICS]
            (weights,) = reply.content.array_records.values()
            client_id = int(metrics[keys.CLIENT_ID])
            proxy = self._proxies.get(client_id) or PhoneProxy(str(client_id))
            results.append((proxy, FitRes(
                Status(Code.OK, ""), to_parameters(weights, self._names),
                int(metrics[keys.NUM_EXAMPLES]), dict(metrics),
            )))
        parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        metrics = dict(metrics or {})
        if parameters is None:
            return None, numeric(metrics)
        metrics.update(self._evaluate(server_round, parameters))
        return to_arrays(parameters, self._global), numeric(metrics)

    def _evaluate(self, server_round: int, parameters: Parameters) -> dict:
        """The legacy ``evaluate`` hook's result as metrics (empty when it returns None)."""
        result = self.strategy.evaluate(server_round, parameters)
        if result is None:
            return {}
        loss, metrics = result
        log.info("strategy evaluate, round %d: loss %s %s", server_round, loss, metrics)
        return {"evaluate-loss": loss, **{f"evaluate-{k}": v for k, v in metrics.items()}}

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # evaluation is central (fedsim.server.evaluation)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log.info("legacy strategy: %r", self.strategy)

    # The adapter keeps nothing between rounds (its attributes are the round's scratch); the
    # legacy strategy under it is checkpointed as its own layer (fedsim.strategy.saved_state).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
