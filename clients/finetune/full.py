"""``full``: every parameter trains, as in FedAvg (McMahan et al., AISTATS 2017)."""

from __future__ import annotations

from clients.finetune.base import FineTuneMode


class Full(FineTuneMode):
    """Every parameter trains on the shard itself; the base's hooks as they stand."""

    name = "full"
