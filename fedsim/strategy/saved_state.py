"""The state a strategy keeps between rounds, as data: arrays and JSON values, never objects.

A checkpoint (:mod:`fedsim.run.checkpoint`) must be safe to open, so it cannot hold a pickled
strategy. It holds, for each stateful layer of the stack (the privacy wrapper, if any, and the
user's strategy; :attr:`fedsim.strategy.stack.StrategyStack.checkpointed` and every
``.strategy`` below it), what that layer keeps from one round to the next, found in one of
three ways:

1. **The hook.** A class that defines ``state_dict() -> dict`` and ``load_state_dict(dict)``
   (the names PyTorch uses) says itself what it keeps. The dict's values may be numpy arrays,
   numpy scalars, ``ArrayRecord``, numbers, strings, ``None`` and lists, tuples and dicts of
   these (dict keys: strings or ints). fedsim's privacy wrappers use the same hook.
2. **Flower's stock strategies** keep what :data:`STOCK_STATE` lists, read from
   ``flwr/serverapp/strategy/``: FedAdam, FedYogi and FedAdagrad their moments ``m_t`` and
   ``v_t`` (``FedOpt``), FedAvgM its momentum and the model it steps from. FedAvg, FedProx,
   FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan and q-FedAvg keep nothing (q-FedAvg and
   FedOpt copy the round's model in ``configure_train``, which every round redoes).
3. **Any other class** without the hook is checked at every checkpoint: its attributes must be
   those it had when the run built it (values compared: numbers, strings, arrays and lists,
   tuples and dicts of them; other objects by identity), apart from an attribute holding the
   model the strategy was given in this round's ``configure_train`` (per-round scratch, as in
   Flower's own strategies and ``examples/custom_strategy.py``). An attribute that changed
   otherwise is state fedsim cannot see how to save: the checkpoint records that, and resuming
   it is refused in one line naming the attribute. A legacy ``flwr.server.strategy`` class
   (run by :class:`fedsim.strategy.legacy.LegacyStrategy`, which itself keeps nothing) is
   checked the same way: stock legacy FedAvg, FedProx, FedMedian, FedTrimmedAvg, Krum and
   Bulyan keep nothing between rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvgM, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from fedsim.errors import UserInputError
from fedsim.strategy.wrapper import ANY_STRATEGY

# What each stock Flower class keeps between rounds (subclasses inherit the entry).
STOCK_STATE: dict[type, tuple[str, ...]] = {
    FedOpt: ("m_t", "v_t"),
    FedAvgM: ("current_arrays", "momentum_vector"),
}
HOOK = ("state_dict", "load_state_dict")


class StateError(UserInputError):
    """A strategy's state cannot be saved as data, or a saved state does not fit; one line."""


def class_name(layer: object) -> str:
    return f"{type(layer).__module__}.{type(layer).__qualname__}"


def layers(strategy: Strategy) -> list[Strategy]:
    """``strategy`` and every strategy it wraps (each kept as ``.strategy``), outermost first;
    a legacy strategy under :class:`~fedsim.strategy.legacy.LegacyStrategy` is a layer too."""
    found = [strategy]
    while isinstance(getattr(found[-1], "strategy", None), ANY_STRATEGY):
        found.append(found[-1].strategy)
    return found


def has_hook(layer: Strategy) -> bool:
    return all(callable(getattr(layer, name, None)) for name in HOOK)


def stock_state_names(layer: Strategy) -> tuple[str, ...]:
    """The attributes :data:`STOCK_STATE` lists for the nearest stock class of ``layer``."""
    for cls in type(layer).__mro__:
        if cls in STOCK_STATE:
            return STOCK_STATE[cls]
    return ()


class StackState:
    """Captures the stateful layers' state at a round's end, and restores it on resume.

    Parameters
    ----------
    checkpointed : Strategy
        The stack's stateful part (the privacy wrapper, if any, around the user's strategy),
        just built: attributes of layers without the hook are compared with these.
    """

    def __init__(self, checkpointed: Strategy) -> None:
        self.layers = layers(checkpointed)
        self._built = [
            None if has_hook(layer) else {n: fingerprint(v) for n, v in vars(layer).items()}
            for layer in self.layers
        ]

    def capture(self, round_start: ArrayRecord) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(JSON, arrays)`` describing every layer; ``round_start``: this round's model.

        The JSON's ``unsaved`` names an attribute that changed and could not be saved (None if
        nothing did); a resume of such a checkpoint is refused.
        """
        described, arrays, unsaved = [], {}, None
        for index, (layer, built) in enumerate(zip(self.layers, self._built)):
            if built is None:
                state = layer.state_dict()
                if not isinstance(state, Mapping):
                    raise StateError(
                        f"strategy: {type(layer).__name__}.state_dict() returned a "
                        f"{type(state).__name__}, not a dict"
                    )
            else:
                state = {name: getattr(layer, name, None) for name in stock_state_names(layer)}
                unsaved = unsaved or changed_attribute(layer, built, round_start)
            where = f"{type(layer).__name__}.state_dict()" if built is None else type(layer).__name__
            described.append(
                {"class": class_name(layer), "state": to_data(dict(state), f"strategy.{index}",
                                                              arrays, where)}
            )
        return {"layers": described, "unsaved": unsaved}, arrays

    def restore(self, saved: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Put a :meth:`capture` back into the freshly built layers (one-line error if unfit)."""
        if saved.get("unsaved"):
            raise StateError(
                f"{saved['unsaved']} changed between rounds and its class has no "
                f"state_dict()/load_state_dict(), so the checkpoint could not save it; this run "
                "cannot be resumed (docs/reliability.md#a-strategys-state)"
            )
        found = [entry["class"] for entry in saved["layers"]]
        built = [class_name(layer) for layer in self.layers]
        if found != built:
            raise StateError(f"the checkpoint's strategy is {found}, the run's config builds {built}")
        for layer, entry in zip(self.layers, saved["layers"]):
            state = from_data(entry["state"], arrays)
            if has_hook(layer):
                layer.load_state_dict(state)
            else:
                for name, value in state.items():
                    setattr(layer, name, value)


def changed_attribute(
    layer: Strategy, built: dict[str, tuple], round_start: ArrayRecord
) -> str | None:
    """``Class.attribute`` of the first attribute that changed and is not saved, or None."""
    saved = set(stock_state_names(layer))
    start = None
    for name, value in vars(layer).items():
        if name in saved:
            continue
        if isinstance(value, (ArrayRecord, Mapping, list, tuple)) and value:
            # Cheaper than a fingerprint: most model-sized attributes are the round's model.
            start = start or {key: numpy_view(array) for key, array in round_start.items()}
            if holds_model(value, start):
                continue
        if name not in built or fingerprint(value) != built[name]:
            return f"{type(layer).__name__}.{name}"
    return None


def numpy_view(array: Array) -> np.ndarray:
    """``array.numpy()`` without parsing its ``.npy`` header: a read-only view of its bytes.

    ``Array.numpy()`` runs ``np.load``, whose header parsing costs ~0.25 ms per tensor: most of
    a checkpoint's time for a model of a few hundred tensors. ``Array`` already knows the dtype
    and shape, and a C-order ``.npy`` ends with the raw data, so the view is the data's tail.
    """
    dtype = np.dtype(array.dtype)
    count = int(np.prod(array.shape, dtype=np.int64))
    data = array.data
    if array.stype != "numpy.ndarray" or b"'fortran_order': False" not in data[:256]:
        return array.numpy()
    return np.frombuffer(data, dtype, count, len(data) - count * dtype.itemsize).reshape(array.shape)


def holds_model(value: Any, model: dict[str, np.ndarray]) -> bool:
    """Whether ``value`` is ``model`` (an ArrayRecord, a name -> array dict, or an array list)."""
    if isinstance(value, ArrayRecord):
        value = {key: numpy_view(array) for key, array in value.items()}
    if isinstance(value, (list, tuple)) and len(value) == len(model):
        value = dict(zip(model, value))
    if not isinstance(value, Mapping) or list(value) != list(model):
        return False
    return all(
        isinstance(value[k], np.ndarray) and np.array_equal(value[k], model[k]) for k in model
    )


def fingerprint(value: Any) -> tuple:
    """A comparable summary of ``value``: contents for data, identity for other objects."""
    if isinstance(value, np.ndarray):
        data = np.asarray(value, order="C")
        return ("array", data.dtype.str, data.shape, hashlib.sha256(data.data).hexdigest())
    if isinstance(value, np.generic):
        return ("scalar", value.dtype.str, value.tobytes())
    if isinstance(value, float):
        return ("float", value.hex())  # nan equals itself here
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return (type(value).__name__, value)
    if isinstance(value, ArrayRecord):
        return ("arrays", tuple((k, fingerprint(numpy_view(a))) for k, a in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    if isinstance(value, Mapping):
        return ("dict", tuple((repr(k), fingerprint(v)) for k, v in value.items()))
    return ("object", id(value))


def to_data(value: Any, path: str, arrays: dict[str, np.ndarray], where: str) -> Any:
    """``value`` as JSON, its arrays moved into ``arrays`` under names starting with ``path``."""
    if isinstance(value, np.ndarray):
        arrays[path] = value
        return {"array": path}
    if isinstance(value, np.generic):
        arrays[path] = np.asarray(value)
        return {"scalar": path}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, ArrayRecord):
        return {"arrayrecord": [[k, to_data(numpy_view(a), f"{path}.{i}", arrays, where)]
                                for i, (k, a) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [to_data(v, f"{path}.{i}", arrays, where) for i, v in enumerate(value)]
        return {type(value).__name__: items}
    if isinstance(value, Mapping) and all(isinstance(k, (str, int)) for k in value):
        return {"dict": [[k, to_data(v, f"{path}.{i}", arrays, where)]
                         for i, (k, v) in enumerate(value.items())]}
    raise StateError(
        f"strategy: {where} holds a {type(value).__name__} at {path}; a checkpoint holds only "
        "arrays, numbers, strings, None, ArrayRecords and lists, tuples and dicts of them"
    )


def from_data(data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The value :func:`to_data` described (arrays copied: the strategy may change them)."""
    if not isinstance(data, dict):
        return data
    ((kind, body),) = data.items()
    if kind == "array":
        return np.array(arrays[body])
    if kind == "scalar":
        return np.array(arrays[body])[()]
    if kind == "arrayrecord":
        return ArrayRecord({k: Array(np.array(from_data(v, arrays))) for k, v in body})
    if kind in ("list", "tuple"):
        items = [from_data(v, arrays) for v in body]
        return items if kind == "list" else tuple(items)
    return {k: from_data(v, arrays) for k, v in body}


def clipping_state(layer: Any) -> dict[str, Any]:
    """A privacy wrapper's state: its clipping norm (adaptive clipping moves it), the clipped
    counts summed, and the last round's norm: all :meth:`PrivacyPlan.final_report` reads, in
    O(1) whatever the number of rounds."""
    last = max(layer.norms_used, default=None)
    return {
        "clipping_norm": layer.clipping_norm,
        "clipped": [sum(c for c, _ in layer.clipped), sum(n for _, n in layer.clipped)],
        "last_norm": None if last is None else [last, layer.norms_used[last]],
    }


def load_clipping_state(layer: Any, state: Mapping[str, Any]) -> None:
    """Put :func:`clipping_state` back: the sums stand for the rounds they summed."""
    layer.clipping_norm = state["clipping_norm"]
    layer.clipped = [tuple(state["clipped"])]
    last = state["last_norm"]
    layer.norms_used = {} if last is None else {int(last[0]): last[1]}
