"""Which tensors travel between the server and the phones of a run, and which the phones keep.

A phone uploads the tensors its fine-tuning mode changed
(:meth:`clients.finetune.base.FineTuneMode.uploaded_names`: ``head`` the classifier, ``bias``
the biases, norm affine parameters, BatchNorm statistics and the head, ``full`` everything).

What a phone holds between rounds: the run's starting model, installed with the app before
round 1. Head-, bias- and int8-head fine-tuning adapt a model the phone already runs for
inference (TinyTL's setting, Cai et al., NeurIPS 2020); its frozen backbone is the app's, not a
per-round download. Each round a phone downloads every tensor that may differ from that
install: the tensors *any* phone of the run can upload (:func:`possible_modes`: the run's mode,
the tiers' overrides, ``budget.fallback`` under ``adapt``), or the whole model when the server
itself changes it after aggregation (FedDF, ``distill.where=server_ensemble``). A phone new to
the run therefore receives exactly what it lacks, with no per-phone history on the server (a
million phones cost nothing, a resumed run decides the same). A ``finetune=head`` run
downloads and uploads the classifier only; a run where some phones train everything downloads
everything, because a head-only phone needs the current backbone too.

The rest, :attr:`Exchange.held`, never changes: the server keeps it exactly as installed
(:class:`fedsim.strategy.decode_updates.DecodeUpdates`), which is what makes the install valid.
The same union of uploadable tensors is what central DP clips and noises
(:class:`fedsim.strategy.central_dp.CentralDP`): a set fixed by the config, never by who was
sampled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from clients.finetune import mode_named
from fedsim.fleet.budget import MemoryBudget, fallback_modes
from fedsim.fleet.fleet import Fleet
from fedsim.models.state import exchangeable_state


@dataclass(frozen=True)
class Exchange:
    """The run's tensors by how they travel.

    Attributes
    ----------
    names : tuple of str
        Every exchanged tensor (:func:`fedsim.models.state.exchangeable_state`), in model order.
    uploaded : frozenset of str
        Those some phone of the run can upload: central DP's coordinates.
    downloaded : frozenset of str
        Those every phone downloads each round (``uploaded``, or all if the server refines).
    """

    names: tuple[str, ...]
    uploaded: frozenset[str]
    downloaded: frozenset[str]

    @property
    def held(self) -> frozenset[str]:
        """Tensors the phones keep from install; the server never changes them."""
        return frozenset(self.names) - self.downloaded

    @property
    def everything(self) -> bool:
        """Every tensor travels both ways (``full`` training somewhere): nothing is held."""
        return self.uploaded == frozenset(self.names)


def possible_modes(run_mode: str, fleet: Fleet, budget: MemoryBudget) -> tuple[str, ...]:
    """Every fine-tuning mode a phone of the run can be told: fixed by the config alone."""
    modes = [run_mode, *(p.finetune for p in fleet.tiers.values() if p.finetune)]
    if budget.policy == "adapt":
        modes = [m for start in modes for m in fallback_modes(start, budget.fallback)]
    return tuple(dict.fromkeys(modes))  # unique, first occurrence first


def plan_exchange(
    model: nn.Module, modes: Iterable[str], server_refines: bool = False
) -> Exchange:
    """What travels in a run whose phones train in ``modes``.

    Parameters
    ----------
    model : nn.Module
        The student (only its structure is read).
    modes : iterable of str
        :func:`possible_modes`.
    server_refines : bool
        The server changes the aggregate itself (FedDF): every tensor may differ from install.
    """
    names = tuple(exchangeable_state(model))
    uploaded = frozenset().union(*(mode_named(m).uploaded_names(model) for m in modes))
    downloaded = frozenset(names) if server_refines else uploaded
    return Exchange(names, uploaded, downloaded)
