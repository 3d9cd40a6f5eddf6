"""The ``federated`` stage: plan (no Ray) -> actor pool -> R rounds -> report and artifact.

``run_federated(cfg)`` is the library entry point; ``raydistill federated --config ...`` calls
:func:`run_federated_cli`. Files written under ``<storage>/federated/<run>/``: ``rounds.csv``,
``accuracy.png``, ``partition.txt``, ``summary.json``, ``artifact.json`` (the artifact's path).
The CLI's run is one MLflow run with the global model's metrics per round (``raydistill.tracking``).
"""
from __future__ import annotations

import logging

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import ray
import torch

from raydistill.core.config import save_config, saved_run_config
from raydistill.core.engine import evaluate
from raydistill.core.progress import Progress, log_progress
from raydistill.core.models import build_model
from raydistill.runtime import cluster_cpus, init_ray
from raydistill.federated.actors import ActorPool, RunPayload
from raydistill.federated.plan import pool_size
from raydistill.federated.aggregate import State, to_numpy_state, to_torch_state
from raydistill.federated.checkpoint import CONFIG_FILE, load_round, save_round
from raydistill.federated.client import FaultPlan, LocalSpec, train_client
from raydistill.federated.dispatch import RayExecutor
from raydistill.federated.memory import PeakMemory
from raydistill.federated.plan import FederatedPlan, prepare_federated
from raydistill.federated.report import RoundsCsv, new_run_dir, plot_accuracy, write_federated_artifact
from raydistill.federated.rounds import RoundRecord, run_rounds
from raydistill.federated.strategies import make_strategy

logger = logging.getLogger(__name__)

__all__ = ["FederatedResult", "FederatedRunError", "run_federated", "run_federated_cli", "central_reference"]

MB = 1024**2


class FederatedRunError(RuntimeError):
    """A round had too few clients; the last good global model was saved at ``artifact``."""

    def __init__(self, message: str, *, artifact: Path, run_dir: Path, round: int):
        super().__init__(message)
        self.artifact, self.run_dir, self.round = artifact, run_dir, round


@dataclass
class FederatedResult:
    artifact: Path
    run_dir: Path
    records: list[RoundRecord]
    central: dict
    peak_memory: dict  # {"rss", "pss", "processes"} bytes over the whole run
    actors: int
    seconds: float

    @property
    def final_accuracy(self) -> float:
        return [r for r in self.records if r.status == "ok"][-1].test_accuracy


def _fresh_state(plan: FederatedPlan) -> State:
    """A freshly built global model's state (what a checkpoint must match), leaving torch's RNG as it was."""
    with torch.random.fork_rng():
        return to_numpy_state(_model_factory(plan, plan.cfg.run.seed)().state_dict())


def _model_factory(plan: FederatedPlan, seed: int) -> Callable[[], torch.nn.Module]:
    m, b = plan.cfg.federated.model, plan.bundle

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)  # the same initial global model for federated and central runs
        return build_model(m.name, b.input_shape, b.num_classes, m.args)

    return build


def central_reference(plan: FederatedPlan) -> dict:
    """Train the same model centrally on the union of the clients' data, in-process.

    Same initial weights, optimizer, lr, batch size and augmentation as a client; the epoch budget matches
    the federation's example passes, ``E_c = ceil(rounds * local_epochs * fraction)`` (>= 1).
    """
    f = plan.cfg.federated
    epochs = max(1, math.ceil(f.rounds * f.local_epochs * f.fraction))
    model = _model_factory(plan, plan.cfg.run.seed)()
    spec = LocalSpec(epochs=epochs, batch_size=f.batch_size, lr=f.lr, optimizer=f.optimizer, augment=f.augment,
                     fill=plan.fill, num_classes=plan.bundle.num_classes)
    start = time.perf_counter()
    state, _ = train_client(model, to_numpy_state(model.state_dict()), plan.pool_x, plan.pool_y, spec,
                            seed=plan.cfg.run.seed)
    model.load_state_dict(to_torch_state(state))
    test = evaluate(model, plan.bundle.x_test, plan.bundle.y_test)
    return {"accuracy": test["accuracy"], "loss": test["loss"], "epochs": epochs,
            "examples": int(len(plan.pool_y)), "seconds": round(time.perf_counter() - start, 3)}


def _payload(plan: FederatedPlan, faults: FaultPlan | None) -> RunPayload:
    f, b = plan.cfg.federated, plan.bundle
    teacher = None
    if plan.teacher is not None:
        _, card, state = plan.teacher
        teacher = (card, to_numpy_state(state))
    return RunPayload(plan.pool_x, plan.pool_y, f.model.name, dict(f.model.args), tuple(b.input_shape),
                      b.num_classes, teacher, faults)


def _faults(cfg, faults: FaultPlan | None) -> FaultPlan | None:
    """The test hook's plan, with ``federated.failure_prob`` folded in."""
    p = cfg.federated.failure_prob
    if faults is None:
        return FaultPlan(failure_prob=p, seed=cfg.run.seed) if p > 0 else None
    return replace(faults, failure_prob=max(p, faults.failure_prob), seed=cfg.run.seed)


def _start_pool(plan: FederatedPlan) -> ActorPool:
    f = plan.cfg.federated
    size = pool_size(requested=f.actors, cpus=cluster_cpus(), actor_memory_gb=f.actor_memory_gb,
                     memory_bytes=float(ray.available_resources().get("memory", 0.0)),
                     clients_per_round=plan.per_round)
    return ActorPool(size, actor_memory_gb=f.actor_memory_gb)


def _progress(cfg, csv_file: RoundsCsv, memory: PeakMemory) -> Callable[[RoundRecord], None]:
    def on_round(record: RoundRecord) -> None:
        window = memory.reset_window()
        record.peak_rss_mb, record.peak_pss_mb = round(window["rss"] / MB, 1), round(window["pss"] / MB, 1)
        csv_file.append(record)
        if cfg.run.quiet:
            return
        line = (f"round {record.round:>3}/{cfg.federated.rounds}: {record.participating}/{record.sampled} clients "
                f"({record.dropped} dropped) test_accuracy={record.test_accuracy:.4f} "
                f"loss={record.test_loss:.4f} {record.wall_s:.2f}s [{record.status}]")
        if record.status != "ok":  # always its own line
            logger.info(line)
            return
        log_progress(logger, Progress("federated", record.round, cfg.federated.rounds,
                                      {"acc": f"{record.test_accuracy:.4f}", "clients": record.participating}), line)

    return on_round


def _evaluator(plan: FederatedPlan) -> Callable[[State], dict]:
    model = _model_factory(plan, plan.cfg.run.seed)()

    def evaluate_state(state: State) -> dict:
        model.load_state_dict(to_torch_state(state))
        return evaluate(model, plan.bundle.x_test, plan.bundle.y_test)

    return evaluate_state


def run_federated(cfg, *, faults: FaultPlan | None = None, pool: ActorPool | None = None,
                  resume_dir: str | Path | None = None) -> FederatedResult:
    """Run ``cfg.federated`` end to end; see the module docstring for what is written.

    ``faults`` is the test hook (:class:`FaultPlan`); ``pool`` reuses a started :class:`ActorPool`
    (benchmarks), otherwise one is started and torn down here. ``resume_dir``: a run whose driver
    died, continued with its own saved config from its last checkpointed round (``federated/checkpoint.py``).

    Raises
    ------
    ConfigError, DataError, ArtifactError
        Bad input, before Ray starts.
    FederatedRunError
        A round had fewer than ``federated.min_clients`` clients; the last good model was saved.
    """
    clock = _Clock()
    run_dir = Path(resume_dir).expanduser().resolve() if resume_dir else None
    if run_dir is not None:
        cfg = saved_run_config(cfg, run_dir / CONFIG_FILE, what="federated run")
    plan = prepare_federated(cfg)  # every input error surfaces here, before Ray
    resume = load_round(run_dir, like=_fresh_state(plan)) if run_dir is not None else None
    faults = _faults(cfg, faults)
    clock.lap("plan_s")
    init_ray(cfg.run.address, quiet=cfg.run.quiet)
    if run_dir is None:
        run_dir = new_run_dir(cfg.storage_dir(), cfg.run.name, cfg.federated.strategy)
        save_config(cfg, run_dir / CONFIG_FILE)
    else:
        logger.info(f"resuming {run_dir.name} after round {resume[1][-1].round} of {cfg.federated.rounds}")
    (run_dir / "partition.txt").write_text(plan.summary + "\n")
    if not cfg.run.quiet:
        logger.info(plan.summary)
    clock.lap("ray_init_s")
    with PeakMemory() as memory:
        owned = pool is None
        pool = _start_pool(plan) if owned else pool
        try:
            central = central_reference(plan)  # in-process while the actors import torch
            clock.lap("central_s")
            pool.wait_ready()
            clock.lap("actors_ready_s")
            outcome, actors = _rounds(plan, pool, faults, run_dir, memory, resume), len(pool)
            clock.lap("rounds_s")
        finally:
            if owned:
                pool.shutdown()
    return _finish(plan, outcome, central, run_dir, memory.peak, actors, clock,
                   resumed_after=resume[1][-1].round if resume else None)


class _Clock:
    """Wall time per phase, for the card and the benchmark."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name], self.last = round(now - self.last, 3), now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _rounds(plan: FederatedPlan, pool: ActorPool, faults: FaultPlan | None, run_dir: Path, memory: PeakMemory,
            resume: tuple[State, list[RoundRecord]] | None):
    """R rounds on the pool; after each one the global state is checkpointed, and ``rounds.csv``
    (rewritten from the checkpoint on resume) gets its row."""
    cfg, build = plan.cfg, _model_factory(plan, plan.cfg.run.seed)
    csv_file = RoundsCsv(run_dir / "rounds.csv")
    for record in resume[1] if resume else ():
        csv_file.append(record)
    context = plan.context(build)
    executor = RayExecutor(pool, ray.put(_payload(plan, faults)), timeout_s=cfg.federated.round_timeout_s)
    memory.reset_window()
    return run_rounds(make_strategy(cfg.federated, context), plan.partitions, to_numpy_state(build().state_dict()),
                      executor, _evaluator(plan), rounds=cfg.federated.rounds,
                      on_round=_progress(cfg, csv_file, memory), resume=resume,
                      on_state=lambda state, records: save_round(run_dir, to_numpy_state(state), records))


def _finish(plan, outcome, central, run_dir: Path, peak: dict, actors: int, clock: _Clock, *,
            resumed_after: int | None) -> FederatedResult:
    f = plan.cfg.federated
    failed = outcome.error is not None
    status = f"failed at round {outcome.error.round}: {outcome.error}" if failed else "completed"
    plot_accuracy(outcome.records, central["accuracy"], run_dir / "accuracy.png",
                  title=f"{f.strategy}: {f.clients} clients, {f.partition}"
                        + (f" alpha={f.dirichlet_alpha}" if f.partition == "dirichlet" else ""))
    extra = {"actors": actors, "peak_rss_mb": round(peak["rss"] / MB, 1), "peak_pss_mb": round(peak["pss"] / MB, 1),
             "seconds": round(clock.total, 2), "timings": clock.laps, "resumed_after_round": resumed_after}
    artifact = write_federated_artifact(plan, outcome.state, outcome.records, central=central, run_dir=run_dir,
                                        status=status, extra=extra)
    result = FederatedResult(artifact, run_dir, outcome.records, central, dict(peak), actors, clock.total)
    summary = {"artifact": str(artifact), "status": status, "final_test_accuracy": result.final_accuracy,
               "central_test_accuracy": central["accuracy"], "rejected_updates": outcome.rejected_updates, **extra}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if failed:
        good = outcome.last_good_round
        raise FederatedRunError(f"{outcome.error}; kept the global model of round {good} (test accuracy "
                                f"{result.final_accuracy:.4f}) in {artifact}", artifact=artifact, run_dir=run_dir,
                                round=outcome.error.round)
    return result


def run_federated_cli(cfg, args=None) -> int | None:
    """``raydistill federated``: run, print where things went, track it (per-round metrics from the
    artifact's card); exit 1 if a round failed (the run is then FAILED, with the last good model)."""
    from raydistill.tracking import Tracker

    with Tracker.from_config(cfg).stage(cfg, "federated") as run:
        try:
            result = run_federated(cfg, resume_dir=getattr(args, "resume", "") or None)
        except FederatedRunError as exc:
            logger.error(f"error: {exc}\nrun dir: {exc.run_dir}")
            run.log_artifact(exc.artifact)
            run.status = "FAILED"
            return 1
        run.log_artifact(result.artifact)
        _print_result(result)
    return None


def _print_result(result: FederatedResult) -> None:
    logger.info(f"\nfederated artifact: {result.artifact}\nrun dir: {result.run_dir} (rounds.csv, accuracy.png)\n"
          f"final test accuracy {result.final_accuracy:.4f} vs central {result.central['accuracy']:.4f} "
          f"({result.central['epochs']} epochs); actors={result.actors} "
          f"peak session PSS {result.peak_memory['pss'] / MB:,.0f} MB")
