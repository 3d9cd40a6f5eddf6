"""Teacher soft targets computed once with Ray Data ``map_batches`` (scales out to many actors/GPUs).

The output is a Ray Dataset with columns ``x`` ``(C, H, W)``, ``y`` and ``logits``: ``(C,)`` for
one teacher or ``(K, C)`` for an ensemble of K, fed to student workers as their training set.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from raydistill.core.artifacts import model_from_state
from raydistill.core.engine import run_teachers
from raydistill.runtime import cpu_share


def to_ray_dataset(x: np.ndarray, y: np.ndarray, logits: np.ndarray | None = None):
    """Arrow-backed Ray Dataset with tensor column ``x`` (and ``logits``), int64 ``y``."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    columns: dict[str, Any] = {"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x, np.float32)),
                               "y": pa.array(np.asarray(y, np.int64))}
    if logits is not None:
        columns["logits"] = ArrowTensorArray.from_numpy(np.ascontiguousarray(logits, np.float32))
    return ray.data.from_arrow(pa.table(columns))


class TeacherLogits:
    """Callable class for ``map_batches``: builds the teachers once per actor, adds ``logits``."""

    def __init__(self, teachers: Sequence[tuple[dict, dict]], use_gpu: bool = False, threads: int = 1):
        torch.set_num_threads(max(1, threads))  # Ray gives the actor its CPUs; torch should use them all
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.models = []
        for card, state in teachers:
            self.models.append(model_from_state(card, state).to(self.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.array(batch["x"], dtype=np.float32)).to(self.device)  # a writable copy
        batch["logits"] = run_teachers(self.models, x).cpu().numpy()  # (B, C) or (B, K, C)
        return batch


def compute_soft_targets(ds, teachers: Sequence[tuple[dict, dict]], *, actors: int = 1,
                         use_gpu: bool = False, cpus: float = 1.0, batch_size: int = 1024):
    """Materialized dataset ``ds`` plus the teachers' logits, computed once.

    ``teachers`` is a list of ``(model card, numpy state dict)``. On CPUs the ``actors`` share the
    cluster's ``cpus``: each gets ``cpus / actors`` (whole CPUs when enough) as torch threads.
    """
    numpy_teachers = [(card, {k: v.numpy() for k, v in state.items()}) for card, state in teachers]
    per_actor = cpu_share(cpus, actors)
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": per_actor}
    from ray.data import ActorPoolStrategy

    kwargs = {"teachers": numpy_teachers, "use_gpu": use_gpu, "threads": int(per_actor)}
    # max_restarts=0: Ray Data's default (restart forever) makes Ray's core worker log an error line
    # for every pool actor, because its constructor arguments live in the object store
    # (ray-project/ray#53727) — on every successful run. The pass is one read of the training set: an
    # actor that dies fails it with the actor's error, and the command can be run again.
    # map_batches has no named parameter for it in Ray 2.60 (pinned), so it goes through ray_remote_args,
    # which warns that they are deprecated for Ray 2.64: revisit when moving past 2.63.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(TeacherLogits, fn_constructor_kwargs=kwargs,
                              batch_size=batch_size, compute=ActorPoolStrategy(size=actors), batch_format="numpy",
                              max_restarts=0, **resources).materialize()


def soft_target_arrays(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, logits)`` numpy arrays of a materialized soft-target dataset (in order)."""
    batches = list(ds.iter_batches(batch_size=4096, batch_format="numpy"))
    return tuple(np.concatenate([b[k] for b in batches]) for k in ("x", "y", "logits"))
