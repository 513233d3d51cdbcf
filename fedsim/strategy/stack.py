"""The strategy stack: in which order fedsim's wrappers wrap the user's strategy, written once.

:func:`build_stack` is the only place that composes the stack. The round loop
(:mod:`fedsim.server.rounds`) drives the outermost layer; each layer changes one step and hands
the rest to the layer inside (:class:`~fedsim.strategy.wrapper.StrategyWrapper`)::

    round loop: configure_train(round, global model) / aggregate_train(round, replies)
      |
      v
    VirtualClients              the sampler's cohort of virtual phones, one message each, with
      |                         the device simulation's and fault injection's instructions;
      |                         replies sorted by client id        (fedsim.strategy.virtual_clients)
      v
    DecodeUpdates               encoded deltas / gradients / weights -> weights replies; the
      |                         aggregate cast back to the model's dtypes
      |                                                               (fedsim.strategy.decode_updates)
      v
    EnsembleDistillation        FedDF: refine each aggregate on the proxy split
      |  (optional)             (distill.where=server_ensemble)  (fedsim.strategy.ensemble_distillation)
      v
    the client algorithm's      SCAFFOLD's control variate, FedNova's normalisation
    server half  (optional)     (client_algorithm=...)  (fedsim.strategy.scaffold, .fednova)
      |
      v
    CentralDP                   clip, sum, noise the updates (privacy=central_dp*)
      or LocalDPInstructions    tell the phones C and z (privacy=local_dp)
      |  (optional)                             (fedsim.strategy.central_dp, fedsim.strategy.local_dp)
      v
    the user's strategy         strategy=... (FedAvg, FedAdam, Krum, a class of the user's)

Why this order: the cohort is chosen and the replies put in a fixed order before anything
aggregates; every layer under :class:`DecodeUpdates` sees ordinary weights replies, as Flower's
strategies expect; central DP clips the clients' updates themselves, right above the strategy
that averages them, so that everything above it (the FedDF refinement, the dtype cast) is
post-processing of a DP release. A client algorithm's server half sits on the strategy it
pairs with (and is refused with DP and FedDF, :func:`fedsim.run.checks.check_client_algorithm`):
it reads and strips its own record from the replies, so everything under it sees ordinary
weights replies; the legacy adapter (:mod:`fedsim.strategy.legacy`), when the user named a
``flwr.server.strategy`` class, is the user's strategy here.

The client algorithm's server half, the privacy layer and the user's strategy are the stack's
state (the adaptive clipping norm, the
clipped counts, FedAdam's moments ...): a checkpoint holds that part as data
(:attr:`StrategyStack.checkpointed`, :mod:`fedsim.strategy.saved_state`), and a resumed run
builds a new stack and loads it back. The layers above it keep nothing from one round to the
next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from flwr.serverapp.strategy import Strategy

from fedsim.data.shards import ShardSource
from fedsim.fleet.exchange import Exchange
from fedsim.models.factory import ModelBuilder
from fedsim.privacy.plan import CentralNoise, LocalNoise, Mechanism
from fedsim.proxy.distillation import Distillation
from fedsim.strategy.central_dp import CentralDP
from fedsim.strategy.client_algorithm import ServerHalf
from fedsim.strategy.decode_updates import DecodeUpdates
from fedsim.strategy.ensemble_distillation import EnsembleDistillation
from fedsim.strategy.local_dp import LocalDPInstructions
from fedsim.strategy.virtual_clients import Cohorts, Instructions, VirtualClients
from fedsim.updates import UpdateRule

# The wrapper that applies each privacy option's noise; it takes the description's fields by name.
PRIVACY_WRAPPERS: dict[type, type] = {CentralNoise: CentralDP, LocalNoise: LocalDPInstructions}


@dataclass(frozen=True)
class StrategyStack:
    """The built stack, and the layers a run reports on or checkpoints."""

    top: VirtualClients  # what the round loop drives
    checkpointed: Strategy  # the algorithm's and privacy layers (if any) and the user's: the state
    mechanism: Mechanism | None  # the privacy wrapper, whose clipping the summary reports


def with_privacy(
    strategy: Strategy, noise: CentralNoise | LocalNoise | None,
    exchanged: frozenset[str] | None = None,
) -> Strategy:
    """``strategy`` inside the wrapper that applies ``noise`` (``strategy`` itself without).

    ``exchanged``: the tensors the run's phones can upload, which the server's noise covers
    (``None``: all); under local DP each phone covers its own upload (:mod:`clients.local_dp`).
    """
    if noise is None:
        return strategy
    wrapper = PRIVACY_WRAPPERS[type(noise)]
    arguments = {f.name: getattr(noise, f.name) for f in fields(noise)}
    if isinstance(noise, CentralNoise) and exchanged is not None:
        arguments["exchanged"] = exchanged
    return wrapper(strategy, **arguments)


def build_stack(
    strategy: Strategy,
    *,
    noise: CentralNoise | LocalNoise | None,
    distill: Distillation,
    update: UpdateRule,
    parameter_names: frozenset[str],
    sampler: Cohorts,
    instructions: Sequence[Instructions],
    builder: ModelBuilder,
    shards: ShardSource,
    teacher_logits: np.ndarray | None,
    seed: int,
    exchange: Exchange | None = None,
    algorithm: ServerHalf | None = None,
) -> StrategyStack:
    """Wrap the user's ``strategy`` in fedsim's layers, outermost last (module docstring).

    Parameters
    ----------
    strategy : Strategy
        The user's strategy, as the ``strategy`` option built it.
    noise : CentralNoise, LocalNoise or None
        The privacy option's noise (:attr:`fedsim.privacy.plan.PrivacyPlan.noise`).
    distill : Distillation
        The ``distill`` node; its place says whether FedDF refines the aggregates.
    update : UpdateRule
        What the phones upload, and the codec to decode it with.
    parameter_names : frozenset[str]
        The model's parameters (other float tensors of a gradient upload are deltas).
    sampler : Cohorts
        Chooses each round's virtual clients.
    instructions : sequence of callables
        Per-client message config, in order (:class:`VirtualClients`).
    builder, shards, teacher_logits, seed
        FedDF's student, proxy split, the teacher's logits on it (or None) and the run seed.
    exchange : Exchange, optional
        Which tensors the phones upload (central DP's coordinates) and which they keep from
        install (:mod:`fedsim.fleet.exchange`); ``None``: everything travels.
    algorithm : callable, optional
        The client algorithm's server half (:mod:`fedsim.strategy.client_algorithm`), called
        as ``algorithm(strategy, parameter_names=...)``; ``None``: plain local SGD.
    """
    uploaded = None if exchange is None or exchange.everything else exchange.uploaded
    held = exchange.held if exchange is not None else frozenset()
    checkpointed = with_privacy(strategy, noise, uploaded)
    mechanism = checkpointed if noise is not None else None
    if algorithm is not None:
        checkpointed = algorithm(checkpointed, parameter_names=parameter_names)
    stack = checkpointed
    if distill.where.refines_aggregate:
        stack = EnsembleDistillation(stack, distill, builder, shards, teacher_logits, seed)
    stack = DecodeUpdates(stack, update, parameter_names, held)
    return StrategyStack(VirtualClients(stack, sampler, instructions), checkpointed, mechanism)
