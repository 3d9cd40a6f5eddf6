"""Federated strategies: an ABC with a concrete round loop and small hooks (Flower's ``Strategy``
shape). No Ray: the loop receives an ``execute`` callable that runs the sampled clients somewhere
(Ray actors in ``server.py``, sequentially in ``rounds.InProcessExecutor``).

Round t, as :meth:`Strategy.run_round` runs it::

    clients  = sample_clients(t)                       # fraction of C, seeded by (seed, t)
    spec     = configure_round(t)                      # what every client does locally
    updates  = execute(t, w_t, tasks, spec)            # [(w_i, n_i)], dropped clients counted
    updates  = screen_updates(updates, w_t, tasks)      # wrong keys/shapes, NaN/inf: rejected; n_i = |D_i|
    if len(updates) < min_clients: raise TooFewClientsError
    w        = aggregate(t, updates)                   # FedAvg: sum_i (n_i / n) w_i
    w_{t+1}  = after_aggregate(t, w, updates)          # FedDF: ensemble distillation
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Sequence

import numpy as np
from torch import nn

from raydistill.core.engine import KDSettings
from raydistill.core.registry import Registry
from raydistill.federated.aggregate import (State, Update, distill_ensemble, ensemble_logits, fedavg, fedmedian,
                                           fedtrimmedavg, state_problem, to_numpy_state, to_torch_state)
from raydistill.federated.client import ClientTask, ClientUpdate, LocalSpec

__all__ = ["ServerContext", "Collected", "RoundResult", "TooFewClientsError", "Strategy", "FedAvg", "FedProx",
           "FedMedian", "FedTrimmedAvg", "FedDF", "STRATEGIES", "make_strategy", "clients_per_round", "screen_updates"]


@dataclass(kw_only=True)
class ServerContext:
    """What a strategy may use on the server: the architecture, held-out data, the seed."""

    build_model: Callable[[], nn.Module]
    proxy_x: np.ndarray | None = None  # FedDF's unlabeled proxy slice of the training split
    val: tuple[np.ndarray, np.ndarray] | None = None  # validation split (FedDF early stopping)
    has_teacher: bool = False  # a client teacher was broadcast (client-side KD)
    seed: int = 0
    fill: tuple[float, ...] = ()  # federated.augment's border value per channel (core.recipe.raw_zero_fill)
    num_classes: int = 0
    kd: KDSettings  # federated.method with distill's knobs at distill_temperature (plan.federated_kd), alpha 0


@dataclass
class Collected:
    """The outcome of executing one round's clients."""

    updates: list[ClientUpdate]
    sampled: int
    failed: list[int] = field(default_factory=list)  # the client raised
    crashed: list[int] = field(default_factory=list)  # its actor died
    late: list[int] = field(default_factory=list)  # missed the round deadline
    rejected: dict[int, str] = field(default_factory=dict)  # client id -> why its update was refused
    bytes_sent: int = 0
    bytes_received: int = 0
    actors_replaced: int = 0

    @property
    def dropped(self) -> int:
        return len(self.failed) + len(self.crashed) + len(self.late) + len(self.rejected)


@dataclass
class RoundResult:
    state: dict[str, np.ndarray]
    collected: Collected
    info: dict = field(default_factory=dict)


class TooFewClientsError(RuntimeError):
    """Fewer than ``federated.min_clients`` clients reported in a round; the round is void."""

    def __init__(self, rnd: int, collected: Collected, min_clients: int):
        self.round, self.collected, self.min_clients = rnd, collected, min_clients
        super().__init__(
            f"round {rnd}: only {len(collected.updates)} of {collected.sampled} sampled clients reported "
            f"(federated.min_clients={min_clients}); dropped: {len(collected.failed)} raised, "
            f"{len(collected.crashed)} lost with their actor, {len(collected.late)} missed the "
            f"deadline, {len(collected.rejected)} sent an update that was refused; the last good global "
            f"model is kept")


Execute = Callable[[int, State, Sequence[ClientTask], LocalSpec], Collected]


def screen_updates(collected: Collected, global_state: State, tasks: Sequence[ClientTask]) -> Collected:
    """Keep the updates that can be aggregated; move the others to ``collected.rejected``.

    A client's weight is the size of the partition the server gave it (``n_i = len(task.indices)``),
    never the count it reports; an update from a client that was not sampled is refused.
    """
    sizes = {t.client_id: len(t.indices) for t in tasks}
    kept = []
    for update in collected.updates:
        problem = ("was not sampled this round" if update.client_id not in sizes
                   else state_problem(update.state, global_state))
        if problem:
            collected.rejected[update.client_id] = problem
        else:
            kept.append(replace(update, num_examples=sizes[update.client_id]))
    collected.updates = kept
    return collected


def clients_per_round(num_clients: int, fraction: float) -> int:
    """``max(1, round(fraction * C))`` clients take part in every round."""
    return max(1, min(num_clients, int(round(fraction * num_clients))))


class Strategy(ABC):
    """A round loop with hooks; subclasses override the hooks, never the loop."""

    name: ClassVar[str] = "strategy"

    def __init__(self, fed, context: ServerContext):
        self.fed = fed  # config.FederatedSection
        self.context = context

    # --- hooks ----------------------------------------------------------------------------
    def sample_clients(self, rnd: int) -> list[int]:
        """Uniform sample without replacement of ``clients_per_round`` client ids, seeded by round."""
        rng = np.random.default_rng([self.context.seed, rnd, 0x5A])
        m = clients_per_round(self.fed.clients, self.fed.fraction)
        return sorted(int(c) for c in rng.choice(self.fed.clients, size=m, replace=False))

    def soft_kd(self, alpha: float) -> KDSettings:
        """Client KD's (``alpha = client_kd_alpha``) and FedDF's (``alpha = 0``) loss settings: the context's
        ``federated.method`` and knobs at ``federated.distill_temperature``."""
        return replace(self.context.kd, alpha=alpha)

    def configure_round(self, rnd: int) -> LocalSpec:
        """Local training every client runs this round; client-side KD when a teacher was broadcast."""
        kd = self.soft_kd(self.fed.client_kd_alpha) if self.context.has_teacher else None
        return LocalSpec(epochs=self.fed.local_epochs, batch_size=self.fed.batch_size, lr=self.fed.lr,
                         optimizer=self.fed.optimizer, kd=kd, augment=self.fed.augment, fill=self.context.fill,
                         num_classes=self.context.num_classes)

    @abstractmethod
    def aggregate(self, rnd: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        """The new global state from ``[(state_i, n_i)]``."""

    def after_aggregate(self, rnd: int, state: dict[str, np.ndarray],
                        updates: Sequence[ClientUpdate]) -> tuple[dict[str, np.ndarray], dict]:
        """Server-side step after aggregation; returns ``(state, info)``. Default: unchanged."""
        return state, {}

    # --- the loop ---------------------------------------------------------------------------
    def run_round(self, rnd: int, global_state: State, tasks: Sequence[ClientTask], execute: Execute) -> RoundResult:
        """Configure, execute, check ``min_clients``, aggregate, post-process (module docstring)."""
        spec = self.configure_round(rnd)
        collected = screen_updates(execute(rnd, global_state, tasks, spec), global_state, tasks)
        if len(collected.updates) < self.fed.min_clients:
            raise TooFewClientsError(rnd, collected, self.fed.min_clients)
        state = self.aggregate(rnd, [(u.state, u.num_examples) for u in collected.updates])
        state, info = self.after_aggregate(rnd, state, collected.updates)
        return RoundResult(state, collected, info)


STRATEGIES: Registry[type[Strategy]] = Registry("federated strategy")


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): ``w_{t+1} = sum_i (n_i / n) w_i``."""

    name = "fedavg"

    def aggregate(self, rnd: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return fedavg(updates)


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedProx (Li et al. 2020): clients minimize ``F_i(w) + (mu/2)||w - w_t||^2``; FedAvg on the server."""

    name = "fedprox"

    def configure_round(self, rnd: int) -> LocalSpec:
        return replace(super().configure_round(rnd), mu=self.fed.mu)


@STRATEGIES.register("fedmedian")
class FedMedian(Strategy):
    """Coordinate-wise median of the client weights (Flower's ``FedMedian``): a few clients sending
    scaled or sign-flipped weights cannot drag the global model."""

    name = "fedmedian"

    def aggregate(self, rnd: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return fedmedian(updates)


@STRATEGIES.register("fedtrimmedavg")
class FedTrimmedAvg(Strategy):
    """Coordinate-wise trimmed mean, ``federated.trim_fraction`` cut from each end (Flower's
    ``FedTrimmedAvg``)."""

    name = "fedtrimmedavg"

    def aggregate(self, rnd: int, updates: Sequence[Update]) -> dict[str, np.ndarray]:
        return fedtrimmedavg(updates, self.fed.trim_fraction)


@STRATEGIES.register("feddf")
class FedDF(FedAvg):
    """FedDF (Lin et al. 2020, "Ensemble distillation for robust model fusion"): after FedAvg the
    server distills the clients' ensemble (their averaged logits, softened at T) into the global
    model on an unlabeled proxy set, keeping the best validation accuracy seen."""

    name = "feddf"

    def after_aggregate(self, rnd, state, updates):
        ctx = self.context
        if ctx.proxy_x is None or len(ctx.proxy_x) == 0:
            raise ValueError("feddf needs an unlabeled proxy set (federated.proxy_fraction > 0)")
        model = ctx.build_model()
        teacher_logits = ensemble_logits(model, [u.state for u in updates], ctx.proxy_x)  # (N_p, C)
        model.load_state_dict(to_torch_state(state))
        history = distill_ensemble(model, teacher_logits, ctx.proxy_x, kd=self.soft_kd(0.0),
                                   epochs=self.fed.distill_epochs, lr=self.fed.distill_lr,
                                   batch_size=max(self.fed.batch_size, 64), seed=ctx.seed + 7919 * rnd, val=ctx.val)
        return to_numpy_state(model.state_dict()), {"distill": history}


def make_strategy(fed, context: ServerContext) -> Strategy:
    """``STRATEGIES.get(fed.strategy)(fed, context)``; unknown names list the known ones."""
    return STRATEGIES.get(fed.strategy)(fed, context)
