"""A one-worker stage on this machine alone, in this process: Ray Train's local mode.

``TorchTrainer(..., scaling_config=ScalingConfig(num_workers=0))`` runs the same
:func:`raydistill.training.worker.train_loop_per_worker` in the driver, with ``ray.train.report``
and ``ray.train.get_context`` working as in a worker, but without the Train controller, its helper
actors, a worker process or even a Ray runtime. What local mode does not do, done here:

* checkpoints: each report's state is kept under ``run_dir/checkpoint_<epoch>`` (the newest two),
  written to a temporary name and swapped in (``training.local_checkpoints``), so a partly written
  one is never picked up;
* failures: an exception in the loop is retried up to ``max_failures`` times, each attempt
  resuming from the newest kept checkpoint (a worker group restarts its workers the same way; a
  process that dies outright takes the command with it: use ``workers: 1`` for that).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from raydistill.core.loop import TrainState
from raydistill.training.local_checkpoints import checkpoints, newest_state

logger = logging.getLogger(__name__)


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
