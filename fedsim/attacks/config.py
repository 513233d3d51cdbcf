"""The ``attack`` config group: an option is a behaviour class plus ``fraction``.

An option names a behaviour class from :mod:`fedsim.attacks.byzantine` (``_target_``) and
``fraction``, the probability that a virtual client is malicious; :func:`build_threat` turns it
into the :class:`~fedsim.attacks.threat.ThreatModel` the phones read. Kept apart from the threat
model so that the phone side never imports Hydra.
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra._internal.utils import _locate  # the resolver instantiate() itself uses
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fedsim.attacks import AttackConfigError
from fedsim.attacks.byzantine import ByzantineBehaviour, malicious_clients
from fedsim.attacks.threat import ThreatModel


def build_threat(node: dict[str, Any], population: int, seed: int, num_classes: int) -> ThreatModel:
    """Instantiate the ``attack`` node (a plain dict); the dataset's class count is passed in.

    Raises
    ------
    AttackConfigError
        On a bad fraction, a class that is not a :class:`ByzantineBehaviour`, or arguments its
        constructor rejects; one line naming the key.
    """
    spec = dict(node)
    fraction = float(spec.pop("fraction", 0.0))
    target = spec.get("_target_")
    cls = _locate(target)
    if inspect.isclass(cls) and not issubclass(cls, ByzantineBehaviour):
        raise AttackConfigError(
            f"attack._target_: {target!r} is not a fedsim.attacks.byzantine.ByzantineBehaviour"
        )
    if "num_classes" in inspect.signature(cls).parameters and "num_classes" not in spec:
        spec["num_classes"] = num_classes  # known only once the dataset is loaded
    try:
        behaviour = instantiate(spec)
    except InstantiationException as err:
        if isinstance(err.__cause__, AttackConfigError):
            raise err.__cause__ from None
        cause = err.__cause__ or err
        raise AttackConfigError(
            f"attack: cannot build {target!r}: {str(cause).splitlines()[0]}"
        ) from None
    if not isinstance(behaviour, ByzantineBehaviour):
        raise AttackConfigError(
            f"attack._target_: {target!r} is not a fedsim.attacks.byzantine.ByzantineBehaviour"
        )
    return ThreatModel(behaviour, malicious_clients(population, fraction, seed))
