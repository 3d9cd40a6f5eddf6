"""One round on the actor pool: broadcast once, dispatch, collect under a deadline.

The weights go into the object store once per round (``ray.put``); each actor keeps at most
``MAX_IN_FLIGHT`` clients queued so work flows to whichever actor is free. A client that raises
is *failed*; one whose actor died is *crashed* (the actor is replaced); one still running or
queued at the deadline is *late* (its actor is killed and replaced, so a stuck client cannot
block the next round). All of them are left out of aggregation and counted.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Sequence

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from raydistill.federated.actors import ActorPool, ActorSlot
from raydistill.federated.aggregate import State, state_nbytes, to_numpy_state
from raydistill.federated.client import ClientTask, LocalSpec
from raydistill.federated.strategies import Collected

MAX_IN_FLIGHT = 2

__all__ = ["RayExecutor", "MAX_IN_FLIGHT"]


class RayExecutor:
    """``execute(round, global_state, tasks, spec) -> Collected`` on an :class:`ActorPool`."""

    def __init__(self, pool: ActorPool, run_ref, *, timeout_s: float):
        self.pool, self.run_ref, self.timeout_s = pool, run_ref, timeout_s

    def __call__(self, rnd: int, state: State, tasks: Sequence[ClientTask], spec: LocalSpec) -> Collected:
        weights = to_numpy_state(state)
        refs = {"run": self.run_ref, "weights": ray.put(weights)}  # the one broadcast of this round
        round_ = _Round(self.pool, refs, spec, tasks, model_bytes=state_nbytes(weights))
        replaced_before = self.pool.replaced
        round_.run(deadline=time.monotonic() + self.timeout_s)
        round_.collected.actors_replaced = self.pool.replaced - replaced_before
        return round_.collected


class _Round:
    """The bookkeeping of one round: queue, in-flight references, outcome."""

    def __init__(self, pool: ActorPool, refs: dict, spec: LocalSpec, tasks: Sequence[ClientTask], *,
                 model_bytes: int):
        self.pool, self.refs, self.spec, self.model_bytes = pool, refs, spec, model_bytes
        self.queue = deque(tasks)
        self.inflight: dict = {}  # ObjectRef -> (slot, generation, task)
        self.collected = Collected([], len(tasks))

    def run(self, *, deadline: float) -> None:
        while self.queue or self.inflight:
            self._dispatch()
            waiting = list(self.inflight) + [s.ready_ref for s in self.pool.slots if not s.is_ready]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not waiting:
                break
            done, _ = ray.wait(waiting, num_returns=1, timeout=remaining)
            for ref in done:
                self._settle(ref)
        self._expire()

    def _dispatch(self) -> None:
        """Give queued clients to ready actors with fewer than MAX_IN_FLIGHT in flight."""
        for slot in self.pool.slots:
            while self.queue and slot.is_ready and len(slot.inflight) < MAX_IN_FLIGHT:
                task = self.queue.popleft()
                ref = slot.actor.train.remote(task, self.refs, self.spec)
                slot.inflight.add(ref)
                self.inflight[ref] = (slot, slot.generation, task)
                self.collected.bytes_sent += self.model_bytes

    def _settle(self, ref) -> None:
        if ref not in self.inflight:
            self._settle_ready(ref)
            return
        slot, generation, task = self.inflight.pop(ref)
        slot.inflight.discard(ref)
        try:
            update = ray.get(ref)
        except RayActorError:
            self.collected.crashed.append(task.client_id)
            if slot.generation == generation:  # the first of its lost clients replaces the actor
                self.pool.replace(slot)
            return
        except (RayTaskError, RayError):  # the client raised (or its result was lost)
            self.collected.failed.append(task.client_id)
            return
        self.collected.updates.append(update)
        self.collected.bytes_received += state_nbytes(update.state)

    def _settle_ready(self, ref) -> None:
        """A (replacement) actor finished starting; one that died while starting is replaced again."""
        slot: ActorSlot | None = next((s for s in self.pool.slots if s.ready_ref == ref), None)
        if slot is None:  # that actor was replaced meanwhile
            return
        try:
            self.pool.mark_ready(slot)
        except RayActorError:
            self.pool.replace(slot)

    def _expire(self) -> None:
        """At the deadline: queued and running clients are late; actors still busy are replaced."""
        self.collected.late.extend(task.client_id for task in self.queue)
        self.queue.clear()
        busy = {}
        for slot, generation, task in self.inflight.values():
            self.collected.late.append(task.client_id)
            if slot.generation == generation:
                busy[id(slot)] = slot
        self.inflight.clear()
        for slot in busy.values():
            self.pool.replace(slot)
