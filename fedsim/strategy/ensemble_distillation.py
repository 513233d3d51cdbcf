"""Server-side ensemble distillation after each aggregation (``distill.where=server_ensemble``).

FedDF (Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated
Learning", NeurIPS 2020, Algorithm 1): after averaging, the server fine-tunes the fused model
on unlabelled server data so that it matches the *average logits* of the round's client models,
the ensemble, which is more accurate than the average of their weights under non-IID data.
fedsim's server data is its proxy split; the targets are the clients' mean logits
(``distill.ensemble=clients``, FedDF), the teacher's logits (``teacher``), or the mean of the
two (``both``). The loss is Hinton et al.'s (:mod:`clients.distillation`); with
``distill.alpha < 1`` the proxy split's labels contribute too.

:class:`EnsembleDistillation` wraps the (possibly DP-wrapped) strategy inside
:class:`fedsim.strategy.decode_updates.DecodeUpdates`, so it sees every completed reply as weights. It
needs the individual client models, so ``clients`` and ``both`` are refused with central DP or
secure aggregation (:func:`fedsim.run.checks.check_distillation`); ``teacher`` only
post-processes the aggregate, which neither protects. The refinement's shuffles and dropout are
seeded by (run seed, round), so a resumed run refines exactly as the uninterrupted one did.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from clients.distillation import logits_of
from clients.training import LocalRecipe, train_locally
from fedsim.data.shards import ShardSource
from fedsim.proxy.distillation import Distillation
from fedsim.models.factory import ModelBuilder
from fedsim.models.state import exchangeable_state, load_exchangeable_state
from fedsim.strategy.wrapper import StrategyWrapper

# Distinguishes the server refinement's random stream from every other consumer of the seed.
_SERVER_STREAM = 0xFEDDF


def ensemble_targets(
    client_logits: list[torch.Tensor], teacher_logits: torch.Tensor | None, ensemble: str
) -> torch.Tensor:
    """The logits the global model is distilled towards.

    ``clients``: the mean of the client models' logits (FedDF); ``teacher``: the teacher's;
    ``both``: the mean of the two (teacher and client ensemble weigh one half each).
    """
    if ensemble == "teacher":
        assert teacher_logits is not None
        return teacher_logits
    clients = torch.stack(client_logits).mean(dim=0)
    if ensemble == "clients":
        return clients
    assert teacher_logits is not None
    return 0.5 * (clients + teacher_logits)


def refinement_seed(seed: int, server_round: int) -> int:
    """A 63-bit seed of the server's refinement in ``server_round``."""
    state = np.random.SeedSequence([seed, server_round, _SERVER_STREAM])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> 1)


class EnsembleDistillation(StrategyWrapper):
    """Refine each aggregate on the proxy split against the teacher and/or the client ensemble.

    Parameters
    ----------
    strategy : Strategy
        What aggregates (the user's strategy, possibly DP-wrapped).
    distill : Distillation
        The ``distill`` node (targets, temperature, alpha, the server's SGD).
    builder : ModelBuilder
        Builds the student.
    shards : ShardSource
        Serves the proxy split.
    teacher_logits : np.ndarray or None
        The teacher's logits on the proxy split, when the targets include it.
    seed : int
        Run seed.
    """

    def __init__(
        self, strategy: Strategy, distill: Distillation, builder: ModelBuilder,
        shards: ShardSource, teacher_logits: np.ndarray | None, seed: int,
    ) -> None:
        super().__init__(strategy)
        self.distill = distill
        self.builder = builder
        self.shards = shards
        self.teacher_logits = None if teacher_logits is None else torch.from_numpy(teacher_logits)
        self.seed = seed
        self._proxy: tuple[torch.Tensor, torch.Tensor] | None = None
        self._model: torch.nn.Module | None = None

    def proxy(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._proxy is None:
            x, y = self.shards.proxy()
            self._proxy = torch.from_numpy(x), torch.from_numpy(y)
        return self._proxy

    def model(self) -> torch.nn.Module:
        if self._model is None:
            self._model = self.builder()
        return self._model

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        completed = [r for r in replies if not r.has_error()]
        client_logits = (
            [self.logits(r) for r in completed] if self.distill.uses_client_models else []
        )
        if self.distill.uses_client_models and not client_logits:
            return arrays, metrics
        targets = ensemble_targets(client_logits, self.teacher_logits, self.distill.ensemble)
        return self.refine(arrays, targets, server_round), metrics

    def logits(self, reply: Message) -> torch.Tensor:
        """One client model's logits on the proxy split (its weights, from the decoded reply)."""
        (arrays,) = reply.content.array_records.values()
        model = self.model()
        load_exchangeable_state(model, arrays.to_torch_state_dict())
        return logits_of(model, self.proxy()[0])

    def refine(self, arrays: ArrayRecord, targets: torch.Tensor, server_round: int) -> ArrayRecord:
        """The aggregate after ``distill.server_epochs`` of distillation towards ``targets``."""
        x, y = self.proxy()
        model = self.model()
        load_exchangeable_state(model, arrays.to_torch_state_dict())
        recipe = LocalRecipe(
            epochs=self.distill.server_epochs, batch_size=self.distill.server_batch_size,
            lr=self.distill.server_lr, momentum=0.9,
        )
        seed = refinement_seed(self.seed, server_round)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout
            train_locally(
                model, x, y, recipe, torch.Generator().manual_seed(seed), targets,
                self.distill.loss,
            )
        return ArrayRecord({k: v.clone() for k, v in exchangeable_state(model).items()})
