"""A one-worker stage on this machine alone, in this process: Ray Train's local mode.

``TorchTrainer(..., scaling_config=ScalingConfig(num_workers=0))`` runs the same
:func:`raydistill.training.worker.train_loop_per_worker` in the driver, with ``ray.train.report``
and ``ray.train.get_context`` working as in a worker, but without the Train controller, its helper
actors, a worker process or even a Ray runtime. What local mode does not do, done here:

* checkpoints: each report's state is kept under ``run_dir/checkpoint_<epoch>`` (the newest two),
  written to a temporary name and swapped in (``core.files.swap_in``), so a partly written one
  is never picked up;
* failures: an exception in the loop is retried up to ``max_failures`` times, each attempt
  resuming from the newest kept checkpoint (a worker group restarts its workers the same way; a
  process that dies outright takes the command with it: use ``workers: 1`` for that).
"""
from __future__ import annotations

import logging
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from raydistill.core.files import swap_in
from raydistill.core.loop import STATE_FILE, TrainState, load_train_state, save_train_state

logger = logging.getLogger(__name__)

KEEP = 2  # checkpoints kept per run, as the worker-group path's CheckpointConfig(num_to_keep=2)
_NAME = re.compile(r"checkpoint_(\d+)")


def keep_checkpoint(state: TrainState, run_dir: Path) -> Path:
    """Write ``state`` as ``run_dir/checkpoint_<state.epoch>`` (atomically: temp dir, then rename),
    drop all but the newest :data:`KEEP`; returns the new directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint_{state.epoch:06d}"
    partial = run_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    partial.mkdir()
    save_train_state(state, partial / STATE_FILE)
    swap_in(partial, final)  # the artifacts' mechanism: a complete checkpoint at every instant
    for old in checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Kept checkpoint directories of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def newest_state(run_dir: Path) -> TrainState | None:
    """The state in the newest kept checkpoint of ``run_dir``, or None when it has none."""
    kept = checkpoints(run_dir)
    return load_train_state(kept[-1] / STATE_FILE) if kept else None


@contextmanager
def _quiet_ray_train():
    """Local mode logs its start and every report at INFO ("Reported metrics: ..."); the stage logs
    its own epochs."""
    train_logger = logging.getLogger("ray.train")
    level = train_logger.level
    train_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        train_logger.setLevel(level)


def fit_in_process(loop_config: dict, *, run_dir: Path, max_failures: int) -> TrainState:
    """Run the train loop in this process with up to ``max_failures`` retries; the final state."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.training.worker import train_loop_per_worker

    config = {**loop_config, "run_dir": str(run_dir)}
    for attempt in range(max_failures + 1):
        try:
            with _quiet_ray_train():
                TorchTrainer(train_loop_per_worker, train_loop_config=config,
                             scaling_config=ScalingConfig(num_workers=0),
                             run_config=RunConfig(name=run_dir.name, storage_path=str(run_dir.parent))).fit()
            break
        except Exception as exc:  # noqa: BLE001 - a worker group retries any worker error the same way
            if attempt == max_failures:
                raise
            kept = checkpoints(run_dir)
            logger.warning(f"{run_dir.name}: attempt {attempt + 1} failed ({type(exc).__name__}: {exc}); "
                           f"retrying from {kept[-1].name if kept else 'the start'} "
                           f"({max_failures - attempt} retr{'y' if max_failures - attempt == 1 else 'ies'} left)")
    state = newest_state(run_dir)
    if state is None:
        raise RuntimeError(f"{run_dir.name}: training ended without a checkpoint")
    return state
