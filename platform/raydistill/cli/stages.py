"""Stage entry points shared by the CLI and ``jobs/``: check input, start Ray, run, print; each stage is
one MLflow run (``raydistill.tracking``), and the chosen student becomes the registry's ``champion``."""
from __future__ import annotations

import logging

from pathlib import Path

from raydistill.core.artifacts import load_card, mark_chosen
from raydistill.core.config import Config
from raydistill.core.preflight import preflight
from raydistill.runtime import init_ray, runs_in_process
from raydistill.tracking import Tracker

logger = logging.getLogger(__name__)


def start(cfg: Config, stage: str):
    """Preflight (no Ray), then start or attach to Ray unless the stage trains in this process alone
    (:func:`needs_ray`). Returns the data bundle preflight loaded, which the stage trains on (the
    data set is read once per command)."""
    bundle = preflight(cfg, stage)
    if needs_ray(cfg, stage):
        init_ray(cfg.run.address, quiet=cfg.run.quiet, dashboard=stage == "pipeline")  # the pipeline also tunes
    return bundle


def needs_ray(cfg: Config, stage: str) -> bool:
    """False for one ``workers: auto`` training run on this machine alone (Ray Train's local mode:
    no runtime to start); several teachers, cached soft targets by Ray Data, clusters, GPUs and
    every other stage need one."""
    from raydistill.training.teachers import teacher_runs

    if stage == "teacher":
        return len(teacher_runs(cfg)) > 1 or not runs_in_process(cfg.teacher.workers, cfg.run.use_gpu, cfg.run.address)
    if stage in ("baseline", "distill"):
        d = cfg.distill
        ray_data = stage == "distill" and d.mode == "cached" and d.soft_targets == "ray_data"
        return ray_data or not runs_in_process(d.workers, cfg.run.use_gpu, cfg.run.address)
    return True


def _resumed(cfg: Config, args, stage: str):
    """``(config, ResumedRun)`` of ``--resume <run>`` (the run's own saved config), else ``(cfg, None)``."""
    from raydistill.training.resume import resumed_run

    if not getattr(args, "resume", ""):
        return cfg, None
    resume = resumed_run(cfg, args.resume, stage=stage)
    return resume.cfg, resume


def describe_artifact(path: Path) -> str:
    """Two lines: where the artifact is, and its model, size, accuracies (``-`` for a run without a
    validation split) and the start of its weights' sha256."""
    card = load_card(path)
    m = card["metrics"]
    val = m.get("val_accuracy")
    return (f"{card['kind']} artifact: {path}\n  model={card['architecture']['name']} "
            f"params={card['parameters']:,} test_accuracy={m['test_accuracy']:.4f} "
            f"val_accuracy={'-' if val is None else f'{val:.4f}'} sha256={card['weights_sha256'][:12]}")


def run_teacher(cfg: Config, args=None) -> list[Path]:
    """Train one teacher, or one per (``teacher.models`` x ``teacher.seeds``) entry, as parallel
    Ray Train runs when the cluster's CPUs allow (``teachers.train_teachers``)."""
    from raydistill.training.driver import train_teacher
    from raydistill.training.teachers import train_teachers

    cfg, resume = _resumed(cfg, args, "teacher")
    bundle = start(cfg, "teacher")
    with Tracker.from_config(cfg).stage(cfg, "teacher") as run:
        paths = ([train_teacher(cfg, seed=resume.seed, bundle=bundle, in_process=resume.in_process,
                                run_name=resume.run_name)] if resume else train_teachers(cfg, bundle=bundle))
        for p in paths:
            logger.info(describe_artifact(p))
        run.log_artifacts(paths)
    return paths


def run_distill(cfg: Config, args=None) -> Path:
    """Distill the student and mark it chosen (the default that ``serve`` deploys)."""
    from raydistill.training.driver import distill_student

    cfg, resume = _resumed(cfg, args, "student")
    bundle = start(cfg, "distill")
    with Tracker.from_config(cfg).stage(cfg, "distill") as run:
        path = distill_student(cfg, bundle=bundle, run_name=resume and resume.run_name)
        mark_chosen(path, cfg.storage_dir())
        logger.info(describe_artifact(path))
        run.log_artifact(path)
        run.register_champion(path)
    return path


def run_baseline(cfg: Config, args=None) -> Path:
    """Train the distill section's student alone (no teacher) with the same recipe: the baseline."""
    from raydistill.training.driver import distill_student

    cfg, resume = _resumed(cfg, args, "baseline")
    bundle = start(cfg, "baseline")
    with Tracker.from_config(cfg).stage(cfg, "baseline") as run:
        path = distill_student(cfg, baseline=True, bundle=bundle, run_name=resume and resume.run_name)
        logger.info(describe_artifact(path))
        run.log_artifact(path)
    return path
