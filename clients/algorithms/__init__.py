"""Client algorithms: what runs on the phone around local training (issue 23).

A client algorithm is the phone half of a federated algorithm that needs the phone's
cooperation; its server half is a wrapper in ``fedsim/strategy/`` (the ``client_algorithm``
config group names both, ``fedsim.strategy.client_algorithm``). The base,
:class:`~clients.algorithms.base.LocalAlgorithm`, is plain local SGD and changes nothing.

- :mod:`clients.algorithms.scaffold`: SCAFFOLD (Karimireddy et al., ICML 2020), control
  variates kept per phone between rounds.
- :mod:`clients.algorithms.fednova`: FedNova (Wang et al., NeurIPS 2020), the phone reports its
  normalised local steps.
"""

from clients.algorithms.base import LocalAlgorithm, Outcome

__all__ = ["LocalAlgorithm", "Outcome"]
