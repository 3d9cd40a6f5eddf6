"""The multi-round driver shared by the Ray server and in-process runs. No Ray.

:func:`run_rounds` calls :meth:`Strategy.run_round` R times, evaluates the global model after
each round and records one :class:`RoundRecord` per round (row 0 is the initial model). A round
with too few clients stops the run; the last good global state is returned with the error.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from torch import nn

from raydistill.federated.aggregate import State, state_nbytes, state_problem
from raydistill.federated.client import ClientTask, ClientUpdate, FaultPlan, InjectedClientError, LocalSpec, run_client_task
from raydistill.federated.strategies import Collected, Strategy, TooFewClientsError

__all__ = ["RoundRecord", "RoundsOutcome", "make_tasks", "run_rounds", "InProcessExecutor", "CSV_COLUMNS"]

CSV_COLUMNS = ["round", "sampled", "participating", "dropped", "failed", "crashed", "late", "rejected", "test_accuracy",
               "test_loss", "bytes_sent", "bytes_received", "wall_s", "actors_replaced", "peak_rss_mb",
               "peak_pss_mb", "status"]


@dataclass
class RoundRecord:
    """One row of ``rounds.csv`` plus details that only go into the model card."""

    round: int
    sampled: int = 0
    participating: int = 0
    dropped: int = 0
    failed: int = 0
    crashed: int = 0
    late: int = 0
    rejected: int = 0  # updates refused by strategies.screen_updates (reasons in details["rejected"])
    test_accuracy: float = float("nan")
    test_loss: float = float("nan")
    bytes_sent: int = 0
    bytes_received: int = 0
    wall_s: float = 0.0
    actors_replaced: int = 0
    peak_rss_mb: float = 0.0  # whole Ray session during the round (filled in by the server)
    peak_pss_mb: float = 0.0
    status: str = "ok"
    details: dict = field(default_factory=dict)

    def row(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in CSV_COLUMNS}


@dataclass
class RoundsOutcome:
    state: dict  # the last good global state
    records: list[RoundRecord]
    error: TooFewClientsError | None = None

    @property
    def last_good_round(self) -> int:
        return max(r.round for r in self.records if r.status == "ok")

    @property
    def rejected_updates(self) -> dict[str, dict[str, str]]:
        """``{round: {client id: why its update was refused}}`` for every round that refused one
        (``summary.json``; ``rounds.csv`` has the counts)."""
        return {str(r.round): dict(r.details["rejected"]) for r in self.records
                if (r.details or {}).get("rejected")}


def make_tasks(rnd: int, client_ids: Sequence[int], partitions: Sequence[np.ndarray], seed: int) -> list[ClientTask]:
    """One :class:`ClientTask` per sampled client; its training seed depends on (seed, round, id)."""
    return [ClientTask(rnd, cid, partitions[cid], int(np.random.default_rng([seed, rnd, cid]).integers(2**31)))
            for cid in client_ids]


def _record(rnd: int, collected: Collected, metrics: Mapping, wall: float, *, status: str = "ok",
            info: dict | None = None) -> RoundRecord:
    details = {"failed_ids": collected.failed, "crashed_ids": collected.crashed, "late_ids": collected.late,
               "rejected": {str(k): v for k, v in collected.rejected.items()},
               "weight_fetches": sum(bool(u.metrics.get("fetched_weights")) for u in collected.updates),
               **(info or {})}
    return RoundRecord(rnd, collected.sampled, len(collected.updates), collected.dropped, len(collected.failed),
                       len(collected.crashed), len(collected.late), len(collected.rejected),
                       float(metrics.get("accuracy", float("nan"))),
                       float(metrics.get("loss", float("nan"))), collected.bytes_sent, collected.bytes_received,
                       round(wall, 4), collected.actors_replaced, status=status, details=details)


def run_rounds(strategy: Strategy, partitions: Sequence[np.ndarray], initial_state: State,
               execute: Callable, evaluate: Callable[[State], Mapping], *, rounds: int,
               on_round: Callable[[RoundRecord], None] = lambda r: None,
               on_state: Callable[[State, list[RoundRecord]], None] = lambda s, r: None,
               resume: tuple[State, list[RoundRecord]] | None = None) -> RoundsOutcome:
    """Run rounds up to ``rounds`` of ``strategy``; stop at the first round with too few clients.

    ``on_round`` sees each new record; ``on_state`` the global state after each finished round with
    every record so far (the server checkpoints there). ``resume = (state, records)`` from a
    checkpoint goes on at round ``records[-1].round + 1`` without redoing a finished round."""
    if resume is not None:
        state, records = dict(resume[0]), list(resume[1])
    else:
        state = dict(initial_state)
        records = [RoundRecord(0, **{f"test_{k}": float(v) for k, v in evaluate(state).items()
                                     if k in ("accuracy", "loss")})]
        on_round(records[0])
        on_state(state, records)
    for rnd in range(records[-1].round + 1, rounds + 1):
        start = time.perf_counter()
        tasks = make_tasks(rnd, strategy.sample_clients(rnd), partitions, strategy.context.seed)
        try:
            result = strategy.run_round(rnd, state, tasks, execute)
        except TooFewClientsError as exc:
            records.append(_record(rnd, exc.collected, {}, time.perf_counter() - start, status="failed"))
            on_round(records[-1])
            return RoundsOutcome(state, records, exc)
        metrics = evaluate(result.state)
        loss = metrics.get("loss")  # finite but enormous updates pass the screening and can still overflow
        diverged = state_problem(result.state, state) is not None or (loss is not None and not np.isfinite(loss))
        state = state if diverged else result.state  # a non-finite aggregate never becomes the global model
        records.append(_record(rnd, result.collected, metrics, time.perf_counter() - start, info=result.info,
                               status="diverged" if diverged else "ok"))
        on_round(records[-1])
        on_state(state, records)
    return RoundsOutcome(state, records)


class InProcessExecutor:
    """Runs a round's clients one after another in this process (unit tests, reference runs)."""

    def __init__(self, build_model: Callable[[], nn.Module], pool_x: np.ndarray, pool_y: np.ndarray, *,
                 teachers: Sequence[nn.Module] = (), faults: FaultPlan | None = None):
        self.model = build_model()
        self.pool_x, self.pool_y = pool_x, pool_y
        self.teachers, self.faults = list(teachers), faults

    def __call__(self, rnd: int, state: State, tasks: Sequence[ClientTask], spec: LocalSpec) -> Collected:
        collected = Collected([], len(tasks))
        for task in tasks:
            collected.bytes_sent += state_nbytes(state)
            try:
                update: ClientUpdate = run_client_task(task, self.model, state, self.pool_x, self.pool_y, spec,
                                                       faults=self.faults, teachers=self.teachers)
            except InjectedClientError:
                collected.failed.append(task.client_id)
                continue
            collected.updates.append(update)
            collected.bytes_received += state_nbytes(update.state)
        return collected
