"""User-level differential privacy for federated averaging, and an empirical check of it.

The unit of privacy is one client (phone): neighbouring datasets differ in everything one client
holds, as in DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018).

- :mod:`fedsim.privacy.clipping`: pure numpy. Per-client L2 clipping, the noisy fixed-denominator
  mean of McMahan et al. (2018), and adaptive clipping (Andrew et al., NeurIPS 2021). Imports
  nothing from the server side, so a client-side mod may use it too.
- :mod:`fedsim.privacy.accounting`: epsilon of the whole run through Google's ``dp_accounting``
  (PLD reported, RDP as a cross-check), noise calibration, the round budget, and a thin stateful
  accountant that checkpoints as a plain dict.
- :mod:`fedsim.privacy.membership`: the loss-based membership-inference attack (Shokri et al.
  2017; Yeom et al. 2018) and its ROC against the hypothesis-testing bound that (epsilon,
  delta)-DP implies (Kairouz et al. 2015); :mod:`fedsim.privacy.bootstrap` its intervals;
  :mod:`fedsim.privacy.audit` the ``audit`` config group (example or client level).
- :mod:`fedsim.privacy.options` (none, central DP) and :mod:`fedsim.privacy.local_options`
  (local DP): the ``privacy`` config group. Each returns a :mod:`fedsim.privacy.plan`: the noise
  to apply, described, and its ledger (:mod:`fedsim.privacy.local_accounting` for local DP). The
  wrappers that apply the noise are the strategy stack's (:mod:`fedsim.strategy`); nothing here
  imports them. :mod:`fedsim.privacy.aggregators` says which aggregators each mechanism (and
  :mod:`fedsim.privacy.secagg`) can sit on.

:class:`PrivacyConfigError` lives here, not in ``accounting``, so that ``clipping`` can raise it
without importing ``dp_accounting``.
"""

from fedsim.errors import UserInputError


class PrivacyConfigError(UserInputError):
    """A privacy setting is wrong; the message is one line naming the config key."""
