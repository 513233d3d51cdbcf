"""Byzantine clients: who is malicious, and what a malicious client does.

- :mod:`fedsim.attacks.byzantine`: a seeded malicious set over the virtual population that
  costs O(1) memory whatever the population, model-poisoning behaviours on the update delta
  (sign flip, scaling, a Gaussian update of the honest norm; Blanchard et al., NeurIPS 2017;
  Fang et al., USENIX Security 2020) and label-flipping data poisoning (Tolpegin et al.,
  ESORICS 2020).

The server-side defences are Flower's robust strategies (Krum, Bulyan, FedMedian,
FedTrimmedAvg); this package only produces the attacks they are measured against.
Each behaviour is a class Hydra instantiates via ``_target_``; there is no registry of names.
"""

from fedsim.errors import UserInputError


class AttackConfigError(UserInputError):
    """An attack setting is wrong; the message is one line naming the config key."""
