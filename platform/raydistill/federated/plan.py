"""Everything a federated run decides before Ray starts: data, proxy slice, partitions, teacher.

All input errors surface here as ConfigError / DataError / ArtifactError, so a bad config never
starts an actor (``raydistill federated`` prints ``error: <dotted key>: ...``, exit code 2).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from raydistill.core.artifacts import check_fits, load_state, resolve_artifact
from raydistill.core.config import Config, ConfigError
from raydistill.core.data import DataBundle
from raydistill.core.engine import KDSettings
from raydistill.core.preflight import preflight
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.registry import UnknownNameError
from raydistill.federated.partition import PartitionError, make_partition, partition_summary
from raydistill.federated.strategies import STRATEGIES, ServerContext, clients_per_round

__all__ = ["FederatedPlan", "prepare_federated", "federated_kd", "split_proxy", "pool_size", "ACTOR_CPUS"]

ACTOR_CPUS = 0.5  # 4 actors share 2 CPUs; with 1 CPU each only 2 run and the rest wait (docs/ray-notes.md)
GIB = 1024**3


@dataclass
class FederatedPlan:
    """The data side of a run: the clients' pool, FedDF's proxy, one index array per client."""

    cfg: Config
    bundle: DataBundle
    pool_x: np.ndarray  # (N_pool, C, H, W): the union of the clients' data
    pool_y: np.ndarray  # (N_pool,)
    proxy_x: np.ndarray | None  # (N_proxy, C, H, W), unlabeled, FedDF only
    partitions: list[np.ndarray]
    summary: str
    teacher: tuple[Path, dict, dict] | None  # (path, card, state) for client-side KD
    per_round: int

    @property
    def fill(self) -> tuple[float, ...]:
        """``federated.augment``'s border value per channel: a raw-zero pixel, normalized."""
        return raw_zero_fill(self.bundle.normalization, self.bundle.input_shape[0])

    def context(self, build: Callable[[], nn.Module]) -> ServerContext:
        """What the strategy sees: the model builder, FedDF's proxy and validation data, the seed, and
        what clients need to augment (border fill, class count for mixup)."""
        b = self.bundle
        return ServerContext(build_model=build, proxy_x=self.proxy_x, val=(b.x_val, b.y_val),
                             has_teacher=self.teacher is not None, seed=self.cfg.run.seed, fill=self.fill,
                             num_classes=b.num_classes, kd=federated_kd(self.cfg))


def federated_kd(cfg: Config) -> KDSettings:
    """``federated.method`` with the ``distill`` section's knobs (``dkd_*``, ``dist_*``) at
    ``federated.distill_temperature``; alpha 0 (each use sets its own) and no warm-up (rounds are not epochs)."""
    d = replace(cfg.distill, method=cfg.federated.method)
    kd = KDSettings.for_distill(d, temperature=cfg.federated.distill_temperature, alpha=0.0)
    return replace(kd, warmup_epochs=0)


def split_proxy(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(proxy_idx, client_idx)``: a seeded ``fraction`` of the training split held out for FedDF."""
    perm = np.random.default_rng([seed, 0xDF]).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def _check_strategy(cfg: Config) -> None:
    try:
        STRATEGIES.get(cfg.federated.strategy)
    except UnknownNameError as exc:
        raise ConfigError(f"federated.strategy: {exc}") from exc


def _partitions(cfg: Config, labels: np.ndarray) -> list[np.ndarray]:
    f = cfg.federated
    if f.clients * f.min_partition_size > len(labels):
        raise ConfigError(f"federated.clients: {f.clients} clients x federated.min_partition_size "
                          f"{f.min_partition_size} need {f.clients * f.min_partition_size} examples, but the "
                          f"clients' training pool holds {len(labels)}")
    try:
        return make_partition(labels, f.clients, kind=f.partition, alpha=f.dirichlet_alpha, seed=cfg.run.seed,
                              min_size=f.min_partition_size)
    except PartitionError as exc:
        raise ConfigError(f"federated.dirichlet_alpha: {exc}") from exc


def _teacher(cfg: Config, bundle: DataBundle) -> tuple[Path, dict, dict] | None:
    ref = cfg.federated.client_teacher
    if not ref:
        return None
    path = resolve_artifact(ref, cfg.storage_dir())
    state, card = load_state(path)
    check_fits(card, bundle, what=f"federated.client_teacher: {path}")
    return path, card, state


def prepare_federated(cfg: Config) -> FederatedPlan:
    """Check the config against the data and draw the partitions; no Ray involved."""
    f = cfg.federated
    _check_strategy(cfg)
    per_round = clients_per_round(f.clients, f.fraction)
    if f.min_clients > per_round:
        raise ConfigError(f"federated.min_clients: {f.min_clients} exceeds the {per_round} clients sampled per "
                          f"round (clients={f.clients} x fraction={f.fraction}); no round could succeed")
    bundle = preflight(cfg, "federated")
    proxy_x, pool_x, pool_y = None, bundle.x_train, bundle.y_train
    if f.strategy == "feddf":
        proxy_idx, client_idx = split_proxy(len(bundle.y_train), f.proxy_fraction, cfg.run.seed)
        if len(proxy_idx) == 0:
            raise ConfigError(f"federated.proxy_fraction: {f.proxy_fraction} of {len(bundle.y_train)} training "
                              f"examples leaves FedDF no proxy data")
        proxy_x, pool_x, pool_y = bundle.x_train[proxy_idx], bundle.x_train[client_idx], bundle.y_train[client_idx]
    partitions = _partitions(cfg, pool_y)
    summary = partition_summary(partitions, pool_y, bundle.class_names)
    return FederatedPlan(cfg, bundle, np.ascontiguousarray(pool_x), pool_y, proxy_x, partitions, summary,
                         _teacher(cfg, bundle), per_round)


def pool_size(*, requested: int, cpus: float, memory_bytes: float, actor_memory_gb: float,
              clients_per_round: int) -> int:
    """Actors to start: ``federated.actors`` if set, else ``min(CPUs, memory / actor_memory_gb,
    clients per round)``. Raises ConfigError when the request cannot be scheduled."""
    if requested:
        if requested * ACTOR_CPUS > cpus:
            raise ConfigError(f"federated.actors: {requested} actors x {ACTOR_CPUS} CPU = {requested * ACTOR_CPUS} "
                              f"CPUs, but the cluster has {cpus:g}; the extra actors would wait forever")
        return requested
    by_memory = int(memory_bytes // (actor_memory_gb * GIB))
    if by_memory < 1:
        raise ConfigError(f"federated.actor_memory_gb: {actor_memory_gb} GiB per actor, but the cluster has "
                          f"{memory_bytes / GIB:.1f} GiB of memory to schedule on")
    return max(1, min(int(cpus), by_memory, clients_per_round))
