"""The function every Ray Train worker runs. It lives in the package (never in a test module:
workers that cannot import the train function hang ``fit()`` for good, see docs/ray-notes.md)."""
from __future__ import annotations

import logging

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import ray.train
import ray.train.torch

from raydistill.core.engine import (iterate_batches, rank_shard, read_only_tensors, teacher_logits,
                                    teacher_view_cache)
from raydistill.core.views import local_views
from raydistill.core.loop import (STATE_FILE, StageSpec, TrainState, run_epochs, save_train_state, shuffle_seed,
                                  state_from_checkpoint)
from raydistill.core.artifacts import model_from_state
from raydistill.core.progress import Progress, log_progress
from raydistill.training.local_checkpoints import keep_checkpoint, newest_state
from raydistill.training.resume import newest_of, newest_persisted_state

logger = logging.getLogger(__name__)



def cached_share(train: list[torch.Tensor], teachers, views, topk: int, *, rank: int, device,
                 pool: torch.Tensor | None = None) -> list[torch.Tensor]:
    """This rank's ``(x, y)`` share plus the teachers' logits on it, ``(x, y, z_t)``; with a view cache
    ``(x, y, idx, values, indices, rest)``, where ``idx`` are the share's training-set indices
    (``rank_shard`` gives rank ``r`` rows ``[r * n, (r + 1) * n)``), which regenerate each view (mixed
    views: with partners from ``pool``, the whole training set's images)."""
    x = train[0]
    if views is None:
        return [*train, teacher_logits(teachers, x, device=device)]
    idx = torch.arange(rank * len(x), (rank + 1) * len(x))
    return [*train, idx, *teacher_view_cache(views, teachers, x, idx, topk, device=device, pool=pool)]


def _resolve(value):
    """An object ref's value (worker actors), or the value itself (in process: no object store)."""
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _shard_tensors(ref, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's share of the arrays behind ``ref`` (one ``ray.put`` by the driver: zero-copy on
    this node; or the arrays themselves in process), as tensors."""
    return read_only_tensors(rank_shard(_resolve(ref), rank, world))


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _crash_hook(crash_at_epoch: int, marker: str, rank: int, world: int, *, in_process: bool = False):
    """Fault injection for tests: the last rank dies once, at ``crash_at_epoch`` (in process, where
    dying would end the command, it raises instead)."""

    def before_epoch(epoch: int) -> None:
        if epoch == crash_at_epoch and rank == world - 1 and marker and not os.path.exists(marker):
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).write_text(f"crashed at epoch {epoch}\n")
            if in_process:
                raise RuntimeError(f"fault injection: the loop fails before epoch {epoch + 1} (distill.crash_at_epoch)")
            os._exit(1)

    return before_epoch


def _online_teachers(teachers_ref, device) -> list[torch.nn.Module]:
    if teachers_ref is None:
        return []
    return [model_from_state(card, state).to(device) for card, state in _resolve(teachers_ref)]


def _log_epoch(spec: StageSpec, metrics: dict, *, in_process: bool) -> None:
    """The epoch as a progress event (a bar on a terminal, milestone lines otherwise). A worker actor
    has no console of its own (Ray forwards its stdout as lines): it logs the milestones only."""
    epoch, loss, val = metrics["epoch"], f"{metrics['train_loss']:.4f}", metrics["val_accuracy"]
    val = "-" if val is None else f"{val:.4f}"
    progress = Progress(spec.stage, epoch, spec.epochs, {"loss": loss, "val_acc": val})
    if in_process or progress.milestone:
        log_progress(logger, progress, f"[{spec.stage}] epoch {epoch}/{spec.epochs} train_loss={loss} val_acc={val}")


def _resume(run_dir: Path | None) -> TrainState | None:
    """Where to start: in process, the newest checkpoint kept by an earlier attempt (local mode starts
    every attempt without one); in a worker group, the newer of the checkpoint Ray Train restored
    this worker with and the newest one already on the run's storage (training/resume.py)."""
    if run_dir is not None:
        return newest_state(run_dir)
    return newest_of(state_from_checkpoint(ray.train.get_checkpoint()),
                     newest_persisted_state(ray.train.get_context().get_storage()))


def _quiet_ray_train_reports() -> None:
    """WARNING and above only from Ray Train's per-report loggers in this worker: ``ray.train``
    ("Checkpoint successfully created at ...") and the execution context's, which is named by its
    file path rather than under ``ray.train`` ("Reporting training result 3: TrainingReport(...)")."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    context = sys.modules.get("ray.train.v2._internal.execution.context")
    if context is not None:
        logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``config["spec"]`` on this rank's shards; rank 0 checkpoints after every epoch."""
    spec: StageSpec = config["spec"]
    run_dir = Path(config["run_dir"]) if config.get("run_dir") else None  # set in process (in_process.py)
    if config.get("verbose") and run_dir is None and not logger.handlers:  # a worker has no console; Ray logs its stdout
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # Ray Train's own console handler on the root logger would print each line again
    if not config.get("ray_logs"):  # Ray Train's per-report INFO lines, unless run.verbose
        _quiet_ray_train_reports()
    # Ray sets OMP_NUM_THREADS from the worker's CPUs (1 when fractional); use exactly what the plan gave
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config.get("use_gpu") else torch.device("cpu")
    train = _shard_tensors(config["data"]["train"], rank, world)  # (x, y) or (x, y, teacher logits)
    val = _shard_tensors(config["data"]["val"], rank, world)
    teachers = _online_teachers(config.get("teachers_ref"), device)
    # mixed views (core.mixup) draw partners from the whole training set: (x, y) in training-set order
    pool = read_only_tensors(_resolve(config["data"]["train"])[:2]) if spec.views and spec.views.spec.mixup else None
    if teachers and config.get("cache_logits"):  # cached mode, logits made here: once, for this rank's share
        train, teachers = cached_share(train, teachers, spec.views, config.get("cache_topk", 0), rank=rank,
                                       device=device, pool=pool and pool[0]), []

    def report(metrics: dict, state: TrainState) -> None:
        metrics["threads"] = torch.get_num_threads()  # evidence the worker used the CPUs it was given
        epoch = metrics["epoch"]
        save = epoch % spec.recipe.checkpoint_every == 0 or epoch == spec.epochs
        if rank == 0 and config.get("verbose"):
            _log_epoch(spec, metrics, in_process=run_dir is not None)
        if run_dir is not None:  # local mode keeps no checkpoint of its own
            kept = keep_checkpoint(state, run_dir) if save else None
            ray.train.report(metrics, checkpoint=kept and ray.train.Checkpoint.from_directory(str(kept)))
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0 and save:
                save_train_state(state, Path(d) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    train, views = local_views(spec.views, train, pool)  # with a view cache: (x, y, rows) + the share's cache
    run_epochs(spec,
               train_batches=lambda e: iterate_batches(train, spec.batch_size, shuffle=True,
                                                       seed=shuffle_seed(spec.seed, e, world=world, rank=rank)),
               val_batches=lambda: iterate_batches(val, 1024, shuffle=False),
               report=report, resume=_resume(run_dir),
               prepare_model=ray.train.torch.prepare_model,
               reduce_sums=_sum_over_ranks if world > 1 else (lambda t: t),
               before_epoch=_crash_hook(config.get("crash_at_epoch", -1), config.get("crash_marker", ""), rank, world,
                                        in_process=run_dir is not None),
               teachers=teachers, device=device, views=views)
