"""Several teachers in one ``raydistill teacher`` call: one Ray Train run per (architecture, seed).

Runs go in parallel, as concurrent ``TorchTrainer.fit`` calls from driver threads, when the
cluster has the CPUs for more than one run at a time; otherwise one after another. Each run is
an ordinary teacher stage (``train.train_teacher``) and writes its own artifact.
"""
from __future__ import annotations

import logging

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from raydistill.core.config import Config, ModelSpec
from raydistill.core.data import DataBundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherRun:
    """One teacher to train: its architecture and its seed (init and shuffling)."""

    model: ModelSpec
    seed: int

    def describe(self) -> str:
        return f"{self.model.name}{self.model.args or ''} seed={self.seed}"


def teacher_runs(cfg: Config) -> list[TeacherRun]:
    """Every ``teacher.models`` entry (default ``[teacher.model]``) times every ``teacher.seeds``
    entry (default ``[run.seed]``), architectures outermost."""
    models = list(cfg.teacher.models) or [cfg.teacher.model]
    seeds = list(cfg.teacher.seeds) or [cfg.run.seed]
    return [TeacherRun(model=m, seed=s) for m in models for s in seeds]


def parallel_slots(runs: int, workers_per_run: int, cluster_cpus: float) -> int:
    """How many runs can train at once: ``min(runs, floor(cpus / workers_per_run))``, at least 1.

    Each Ray Train worker takes one CPU (the V2 controller takes none), so a run that does not
    fit would wait for CPUs anyway; capping here keeps every started run busy.
    """
    return max(1, min(runs, int(cluster_cpus // max(workers_per_run, 1))))


def schedule_message(runs: list[TeacherRun], slots: int, workers: int, cpus: float) -> str:
    """One line saying what will run and whether in parallel or sequentially (and why)."""
    what = ", ".join(r.describe() for r in runs)
    if len(runs) == 1:
        return f"teacher: 1 run ({what})"
    if slots > 1:
        return (f"teacher: {len(runs)} runs ({what}); in parallel, {slots} at a time "
                f"({cpus:g} CPUs, {workers} worker(s) per run)")
    return (f"teacher: {len(runs)} runs ({what}); sequentially ({cpus:g} CPUs hold one run of "
            f"{workers} worker(s) at a time)")


def train_teachers(cfg: Config, *, cpus: float | None = None, bundle: DataBundle | None = None) -> list[Path]:
    """Train every teacher run (parallel when CPUs allow); returns artifact paths in run order.

    Several runs need Ray (``stages.start``); one ``workers: auto`` run on this machine trains in
    process. ``cpus`` defaults to the cluster's CPU count;
    ``bundle`` is the data preflight loaded (``driver.train_teacher``).
    """
    from raydistill.runtime import available_cpus
    from raydistill.training.driver import train_teacher

    runs = teacher_runs(cfg)
    cpus = available_cpus() if cpus is None else cpus
    per_run = 1 if cfg.teacher.workers == "auto" else int(cfg.teacher.workers)  # auto: 1 worker, CPUs shared
    slots = parallel_slots(len(runs), per_run, cpus)
    logger.info(schedule_message(runs, slots, per_run, cpus))

    def train_one(run: TeacherRun) -> Path:
        return train_teacher(replace(cfg, teacher=replace(cfg.teacher, model=run.model)), seed=run.seed,
                             cpus=cpus / slots, bundle=bundle, in_process=len(runs) == 1)

    if slots == 1:
        paths = [train_one(r) for r in runs]
    else:
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="teacher") as pool:
            paths = list(pool.map(train_one, runs))  # map keeps run order; re-raises a run's error
    if len(paths) > 1:
        logger.info(f"distill from all of them with: --set '{ensemble_override(paths)}'")
    return paths


def ensemble_override(paths: list[Path], weights: list[float] | None = None) -> str:
    """The ``distill.teachers=[...]`` override (YAML flow) naming ``paths`` with equal or given weights."""
    weights = weights or [1.0] * len(paths)
    items = ", ".join(f"{{artifact: {p}, weight: {w:g}}}" for p, w in zip(paths, weights))
    return f"distill.teachers=[{items}]"
