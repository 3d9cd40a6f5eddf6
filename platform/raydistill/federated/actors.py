"""The Ray side of the clients: a bounded pool of actors, each running many virtual clients.

An actor holds no client state. Every call names a client (its partition indices) and two
object-store references: the run payload (training pool, architecture, teacher, faults; put
once per run) and the round's global weights (put once per round). The actor resolves each
reference once and caches it, so a round costs one broadcast however many clients an actor runs.
Actors ask for 0.5 CPU: with ``num_cpus=1`` actors beyond the CPU count would wait forever
(docs/ray-notes.md, "Actors").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch

from raydistill.core.models import build_model
from raydistill.federated.client import ClientTask, ClientUpdate, FaultPlan, LocalSpec, run_client_task

from raydistill.federated.plan import ACTOR_CPUS, GIB
START_TIMEOUT_S = 180.0

__all__ = ["RunPayload", "ClientWorker", "ActorPool", "ActorSlot", "ACTOR_CPUS"]


@dataclass
class RunPayload:
    """Everything an actor needs for a run, shipped once through the object store."""

    pool_x: np.ndarray  # (N, C, H, W) float32, the union of the clients' data
    pool_y: np.ndarray  # (N,) int64
    model_name: str
    model_args: dict
    input_shape: tuple
    num_classes: int
    teacher: tuple[dict, dict] | None = None  # (model card, numpy state) for client-side KD
    faults: FaultPlan | None = None


class ClientWorker:
    """Runs virtual clients one after another (wrapped by ``ray.remote`` in :class:`ActorPool`)."""

    def __init__(self) -> None:
        torch.set_num_threads(1)  # actors share the cores; one thread each avoids oversubscription
        self._cached: dict[str, tuple[str, Any]] = {}
        self._model = None
        self._teachers: list = []

    def ready(self) -> int:
        """Pay the first-call costs (lazy torch init) outside any round deadline; returns the pid."""
        model = torch.nn.Linear(4, 2)
        model(torch.zeros(2, 4)).sum().backward()
        return os.getpid()

    def _resolve(self, kind: str, ref) -> Any:
        """``ray.get`` a reference once; a new reference of the same kind replaces the old one."""
        key = ref.hex()
        if kind not in self._cached or self._cached[kind][0] != key:
            self._cached[kind] = (key, ray.get(ref))
            if kind == "run":
                self._build(self._cached[kind][1])
        return self._cached[kind][1]

    def _build(self, run: RunPayload) -> None:
        from raydistill.core.artifacts import model_from_state

        self._model = build_model(run.model_name, run.input_shape, run.num_classes, run.model_args)
        self._teachers = []
        if run.teacher is not None:
            card, state = run.teacher
            self._teachers = [model_from_state(card, state)]

    def train(self, task: ClientTask, refs: dict, spec: LocalSpec) -> ClientUpdate:
        """Train one virtual client; ``refs = {"run": ref, "weights": ref}`` (nested: not auto-resolved)."""
        run: RunPayload = self._resolve("run", refs["run"])
        fetched = self._cached.get("weights", ("",))[0] != refs["weights"].hex()
        weights = self._resolve("weights", refs["weights"])
        update = run_client_task(task, self._model, weights, run.pool_x, run.pool_y, spec, faults=run.faults,
                                 teachers=self._teachers, in_own_process=True)
        update.metrics["fetched_weights"] = fetched  # True for this actor's first client of the round
        return update


@dataclass
class ActorSlot:
    """One place in the pool; ``generation`` grows each time its actor is replaced."""

    actor: Any
    ready_ref: Any  # None once the actor answered ready()
    generation: int = 0
    inflight: set = field(default_factory=set)

    @property
    def is_ready(self) -> bool:
        return self.ready_ref is None


class ActorPool:
    """A fixed number of :class:`ClientWorker` actors; dead or stuck actors are replaced in place."""

    def __init__(self, size: int, *, actor_memory_gb: float):
        self.memory = int(actor_memory_gb * GIB)
        self._remote = ray.remote(num_cpus=ACTOR_CPUS, memory=self.memory, max_restarts=0,
                                  max_task_retries=0)(ClientWorker)
        self.slots = [self._new_slot() for _ in range(size)]
        self.replaced = 0

    def _new_slot(self, generation: int = 0) -> ActorSlot:
        actor = self._remote.remote()
        return ActorSlot(actor, actor.ready.remote(), generation)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until every actor answered ``ready()``; a clear error if they cannot be scheduled."""
        pending = {s.ready_ref: s for s in self.slots if s.ready_ref is not None}
        done, rest = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        if rest:
            raise RuntimeError(f"{len(rest)} of {len(self.slots)} client actors did not start within {timeout_s:.0f} s "
                               f"(each needs {ACTOR_CPUS} CPU and {self.memory / GIB:g} GiB; free: "
                               f"{ray.available_resources()})")
        for ref in done:
            self.mark_ready(pending[ref])

    def mark_ready(self, slot: ActorSlot) -> None:
        ray.get(slot.ready_ref)  # raises if the actor died while starting
        slot.ready_ref = None

    def replace(self, slot: ActorSlot) -> None:
        """Kill ``slot``'s actor (dead, stuck or straggling) and start a fresh one in its place."""
        ray.kill(slot.actor, no_restart=True)
        fresh = self._new_slot(slot.generation + 1)
        slot.actor, slot.ready_ref, slot.generation, slot.inflight = fresh.actor, fresh.ready_ref, fresh.generation, set()
        self.replaced += 1

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
        self.slots = []

    def __len__(self) -> int:
        return len(self.slots)
