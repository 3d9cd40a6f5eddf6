"""The function every Ray Train worker runs. It lives in the package (never in a test module:
workers that cannot import the train function hang ``fit()`` for good, see docs/ray-notes.md)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import ray.train
import ray.train.torch

from raydistill.core.engine import iterate_batches
from raydistill.core.loop import shuffle_seed, StageSpec, TrainState, load_train_state, run_epochs, save_train_state
from raydistill.core.artifacts import model_from_state

STATE_FILE = "state.pt"


class ShardCache:
    """This rank's shard of a Ray Dataset, pulled once into tensors and reshuffled per epoch.

    Ranks are cut to the same length so that DDP's all-reduces line up step for step.
    """

    def __init__(self, shard, columns: tuple[str, ...], world_size: int):
        parts: dict[str, list[torch.Tensor]] = {c: [] for c in columns}
        for batch in shard.iter_torch_batches(batch_size=4096):
            for c in columns:
                parts[c].append(batch[c])
        self.tensors = [torch.cat(parts[c]) if parts[c] else torch.zeros(0) for c in columns]
        n = torch.tensor([len(self.tensors[0])])
        if world_size > 1:
            dist.all_reduce(n, op=dist.ReduceOp.MIN)
        self.tensors = [t[: int(n)] for t in self.tensors]

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0):
        return iterate_batches(self.tensors, batch_size, shuffle=shuffle, seed=seed)


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _resume_state() -> TrainState | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_train_state(Path(d) / STATE_FILE)


def _crash_hook(crash_at_epoch: int, marker: str, rank: int, world: int):
    """Fault injection for tests: the last rank dies once, at ``crash_at_epoch``."""

    def before_epoch(epoch: int) -> None:
        if epoch == crash_at_epoch and rank == world - 1 and marker and not os.path.exists(marker):
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).write_text(f"crashed at epoch {epoch}\n")
            os._exit(1)

    return before_epoch


def _online_teachers(teachers_ref, device) -> list[torch.nn.Module]:
    if teachers_ref is None:
        return []
    return [model_from_state(card, state).to(device) for card, state in ray.get(teachers_ref)]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``config["spec"]`` on this rank's shards; rank 0 checkpoints after every epoch."""
    spec: StageSpec = config["spec"]
    # Ray sets OMP_NUM_THREADS from the worker's CPUs (1 when fractional); use exactly what the plan gave
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if config.get("use_gpu") else torch.device("cpu")
    columns = ("x", "y", "logits") if config.get("cached") else ("x", "y")
    train = ShardCache(ray.train.get_dataset_shard("train"), columns, world)
    val = ShardCache(ray.train.get_dataset_shard("val"), ("x", "y"), world)

    def report(metrics: dict, state: TrainState) -> None:
        metrics["threads"] = torch.get_num_threads()  # evidence the worker used the CPUs it was given
        epoch = metrics["epoch"]
        save = epoch % spec.recipe.checkpoint_every == 0 or epoch == spec.epochs
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0 and save:
                save_train_state(state, Path(d) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            if rank == 0 and config.get("verbose"):
                val = metrics["val_accuracy"]
                print(f"[{spec.stage}] epoch {epoch}/{spec.epochs} train_loss={metrics['train_loss']:.4f} "
                      f"val_acc={'-' if val is None else f'{val:.4f}'}", flush=True)
            ray.train.report(metrics, checkpoint=checkpoint)

    run_epochs(spec,
               train_batches=lambda e: train.batches(spec.batch_size, shuffle=True,
                                                     seed=shuffle_seed(spec.seed, e, world=world, rank=rank)),
               val_batches=lambda: val.batches(1024, shuffle=False),
               report=report, resume=_resume_state(),
               prepare_model=ray.train.torch.prepare_model,
               reduce_sums=_sum_over_ranks if world > 1 else (lambda t: t),
               before_epoch=_crash_hook(config.get("crash_at_epoch", -1), config.get("crash_marker", ""), rank, world),
               teachers=_online_teachers(config.get("teachers_ref"), device), device=device)
