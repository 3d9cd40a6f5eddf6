"""Local training of one virtual client. No Ray: an actor (or a test) calls :func:`train_client`.

A virtual client is only its partition indices into the shared training pool; the model, the
optimizer and the optional teacher belong to whoever runs it, so one process can run many
clients one after another.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from raydistill.core.config.schema import AugmentSpec
from raydistill.core.engine import KDSettings, iterate_batches, train_epoch
from raydistill.core.recipe import augmented
from raydistill.federated.aggregate import proximal_pull, to_numpy_state, to_torch_state

__all__ = ["LocalSpec", "ClientTask", "ClientUpdate", "FaultPlan", "InjectedClientError", "make_local_optimizer",
           "train_client", "run_client_task"]


class InjectedClientError(RuntimeError):
    """Raised on purpose by fault injection (``federated.failure_prob`` or a :class:`FaultPlan`)."""


@dataclass(frozen=True, kw_only=True)
class LocalSpec:
    """What every client does in one round (set by the strategy's ``configure_round`` hook)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"  # sgd | adam
    mu: float = 0.0  # FedProx proximal weight; 0 = plain FedAvg local objective
    kd: KDSettings | None = None  # client-side KD from the broadcast teacher
    augment: AugmentSpec = field(default_factory=AugmentSpec)  # federated.augment, on each local batch
    fill: tuple[float, ...] = ()  # a shifted-in border's value per channel (core.recipe.raw_zero_fill); () = 0
    num_classes: int = 0  # augment.mixup mixes labels into (B, num_classes) distributions


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Test hook: make chosen clients misbehave in chosen rounds.

    Each set holds ``(round, client_id)`` pairs. ``raise_in`` raises
    :class:`InjectedClientError`; ``crash_in`` kills the process running the client
    (``os._exit``, an actor death); ``slow_in`` sleeps ``slow_s`` seconds first (a straggler);
    ``poison_in`` sends NaN weights, ``misshape_in`` a tensor of the wrong shape and
    ``overclaim_in`` claims a million examples, ``flip_in`` sends ``-100 x`` its weights and ``scale_in``
    ``100 x`` them (finite, well shaped: only a robust aggregator resists them) — a faulty or
    malicious client's update.
    """

    raise_in: frozenset = frozenset()
    crash_in: frozenset = frozenset()
    slow_in: frozenset = frozenset()
    poison_in: frozenset = frozenset()
    misshape_in: frozenset = frozenset()
    overclaim_in: frozenset = frozenset()
    flip_in: frozenset = frozenset()
    scale_in: frozenset = frozenset()
    slow_s: float = 3600.0
    failure_prob: float = 0.0
    seed: int = 0

    def apply(self, rnd: int, cid: int, *, in_own_process: bool) -> None:
        """Misbehave as planned for client ``cid`` in round ``rnd`` (no-op otherwise)."""
        if (rnd, cid) in self.crash_in:
            if not in_own_process:
                raise InjectedClientError(f"client {cid} crashed (round {rnd}); no process to kill in-process")
            os._exit(17)
        if (rnd, cid) in self.slow_in:
            time.sleep(self.slow_s)
        draw = np.random.default_rng([self.seed, rnd, cid, 0xFA]).random()
        if (rnd, cid) in self.raise_in or draw < self.failure_prob:
            raise InjectedClientError(f"injected failure of client {cid} in round {rnd}")

    def tamper(self, rnd: int, cid: int, state: dict[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], int]:
        """The update client ``cid`` sends in round ``rnd``: ``(state, n)`` unless planned otherwise."""
        first = next(iter(state))
        if (rnd, cid) in self.poison_in:
            state = {**state, first: np.full_like(state[first], np.nan)}
        factor = -100 if (rnd, cid) in self.flip_in else 100 if (rnd, cid) in self.scale_in else None
        if factor is not None:
            state = {k: (v * factor).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                     for k, v in state.items()}
        if (rnd, cid) in self.misshape_in:
            state = {**state, first: state[first][..., :-1]}
        return state, (1_000_000 if (rnd, cid) in self.overclaim_in else n)


@dataclass(frozen=True)
class ClientTask:
    """One client's work in one round: who it is and which examples it holds."""

    round: int
    client_id: int
    indices: np.ndarray  # (n_i,) int64 into the training pool
    seed: int


@dataclass
class ClientUpdate:
    """What a client sends back: its new weights, its example count and how training went."""

    client_id: int
    state: dict[str, np.ndarray]
    num_examples: int
    train_loss: float
    seconds: float
    metrics: dict = field(default_factory=dict)


def make_local_optimizer(model: nn.Module, spec: LocalSpec) -> torch.optim.Optimizer:
    """Plain SGD, as in FedAvg/FedProx (McMahan et al. 2017), or Adam; fresh every round."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr)
    return torch.optim.SGD(model.parameters(), lr=spec.lr)


def train_client(model: nn.Module, global_state: Mapping, x: np.ndarray, y: np.ndarray, spec: LocalSpec, *,
                 seed: int, teachers: Sequence[nn.Module] = ()) -> tuple[dict[str, np.ndarray], float]:
    """Start from ``global_state``, train ``spec.epochs`` epochs on ``(x, y)``; return ``(state, loss)``.

    ``x`` is ``(n_i, C, H, W)``, ``y`` ``(n_i,)``. FedProx adds ``(mu/2)||w - w_global||^2`` through
    gradient hooks; client-side KD passes ``spec.kd`` and the teacher to ``engine.train_epoch``, which
    labels each (augmented, mixed) batch online. ``spec.augment`` draws from a generator seeded by
    ``(seed, epoch)``, so a client's round is the same wherever it runs.
    The returned loss is the last epoch's mean data loss (without the proximal term).
    """
    model.load_state_dict(to_torch_state(global_state))
    optimizer = make_local_optimizer(model, spec)
    kd, teachers = (spec.kd, teachers) if spec.kd is not None and teachers else (None, ())
    loss = float("nan")
    with proximal_pull(model, global_state, spec.mu):
        for epoch in range(spec.epochs):
            batches = iterate_batches([x, y], spec.batch_size, shuffle=True, seed=seed + epoch)
            batches = augmented(batches, spec.augment, spec.fill, seed=_augment_seed(seed, epoch),
                                num_classes=spec.num_classes)
            loss = train_epoch(model, batches, optimizer, kd=kd, teachers=teachers)
    return to_numpy_state(model.state_dict()), loss


def _augment_seed(seed: int, epoch: int) -> int:
    """The augmentation generator's seed for a client's ``epoch``: a function of ``(seed, epoch)``
    apart from the shuffle's ``seed + epoch``."""
    return int(np.random.default_rng([seed, epoch, 0xA6]).integers(2**63))


def run_client_task(task: ClientTask, model: nn.Module, global_state: Mapping, pool_x: np.ndarray,
                    pool_y: np.ndarray, spec: LocalSpec, *, faults: FaultPlan | None = None,
                    teachers: Sequence[nn.Module] = (), in_own_process: bool = False) -> ClientUpdate:
    """Fault hook, then :func:`train_client` on the client's slice of the pool."""
    start = time.perf_counter()
    if faults is not None:
        faults.apply(task.round, task.client_id, in_own_process=in_own_process)
    x, y = pool_x[task.indices], pool_y[task.indices]  # copies: (n_i, C, H, W), (n_i,)
    state, loss = train_client(model, global_state, x, y, spec, seed=task.seed, teachers=teachers)
    n = len(task.indices)
    if faults is not None:
        state, n = faults.tamper(task.round, task.client_id, state, n)
    return ClientUpdate(task.client_id, state, n, loss, time.perf_counter() - start)
