"""Teacher soft targets computed once with Ray Data ``map_batches`` (scales out to many actors/GPUs).

The output is a Ray Dataset with columns ``x`` ``(C, H, W)``, ``y`` and ``logits``: ``(C,)`` for
one teacher or ``(K, C)`` for an ensemble of K, fed to student workers as their training set. With
``distill.cached_views`` (core.views) it has ``idx`` (the example's index) and the view cache's
``values``/``indices`` ``(V, [K,] k)`` and ``rest`` ``(V, [K])`` instead of ``logits``.
"""
from __future__ import annotations

import warnings
from contextlib import ExitStack
from typing import Any, Sequence

import numpy as np
import ray
import torch

from raydistill.core.artifacts import model_from_state
from raydistill.core.engine import read_only_tensors, teacher_logits, teacher_pass, teacher_view_cache
from raydistill.core.views import ViewCache
from raydistill.runtime import cpu_share


VIEW_COLUMNS = ("values", "indices", "rest")


def to_ray_dataset(x: np.ndarray, y: np.ndarray, logits: np.ndarray | None = None, *, with_index: bool = False):
    """Arrow-backed Ray Dataset with tensor column ``x`` (and ``logits``), int64 ``y`` (and ``idx``,
    each row's index in ``x``: what regenerates its views)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    columns: dict[str, Any] = {"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x, np.float32)),
                               "y": pa.array(np.asarray(y, np.int64))}
    if logits is not None:
        columns["logits"] = ArrowTensorArray.from_numpy(np.ascontiguousarray(logits, np.float32))
    if with_index:
        columns["idx"] = pa.array(np.arange(len(y), dtype=np.int64))
    return ray.data.from_arrow(pa.table(columns))


class TeacherLogits:
    """Callable class for ``map_batches``: builds the teachers once per actor, adds ``logits``."""

    def __init__(self, teachers: Sequence[tuple[dict, dict]], use_gpu: bool = False, threads: int = 1,
                 views: ViewCache | None = None, topk: int = 0, pool=None):
        torch.set_num_threads(max(1, threads))  # Ray gives the actor its CPUs; torch should use them all
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.models = []
        for card, state in teachers:
            self.models.append(model_from_state(card, state).to(self.device))
        self.views, self.topk = views, topk
        # mixed views' partners (core.mixup): the training images, from the object store (zero-copy here)
        images = ray.get(pool) if isinstance(pool, ray.ObjectRef) else pool
        self.pool = None if images is None else read_only_tensors([images])[0]
        # the actor only infers: its teachers go channels-last once for its life, not per batch
        self._layout = ExitStack()
        self._layout.enter_context(teacher_pass(self.models, self.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.array(batch["x"], dtype=np.float32))  # a writable copy
        if self.views is None:  # (B, C) or (B, K, C); channels-last on a CPU, as every teacher pass
            batch["logits"] = teacher_logits(self.models, x, batch_size=max(1, len(x)), device=self.device).numpy()
            return batch
        cache = teacher_view_cache(self.views, self.models, x, torch.from_numpy(np.asarray(batch["idx"], np.int64)),
                                   self.topk, device=self.device, pool=self.pool)
        batch.update({name: t.numpy() for name, t in zip(VIEW_COLUMNS, cache)})
        return batch


def compute_soft_targets(ds, teachers: Sequence[tuple[dict, dict]], *, actors: int = 1,
                         use_gpu: bool = False, cpus: float = 1.0, batch_size: int = 1024,
                         views: ViewCache | None = None, topk: int = 0, pool: np.ndarray | None = None):
    """Materialized dataset ``ds`` plus the teachers' logits, computed once (with ``views``: their
    top-``topk`` logits on every cached view; ``ds`` then needs ``idx``; mixed views need ``pool``, the
    training images ``(N, C, H, W)`` their partners come from, put once in the object store).

    ``teachers`` is a list of ``(model card, numpy state dict)``. On CPUs the ``actors`` share the
    cluster's ``cpus``: each gets ``cpus / actors`` (whole CPUs when enough) as torch threads.
    """
    numpy_teachers = [(card, {k: v.numpy() for k, v in state.items()}) for card, state in teachers]
    per_actor = cpu_share(cpus, actors)
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": per_actor}
    from ray.data import ActorPoolStrategy

    kwargs = {"teachers": numpy_teachers, "use_gpu": use_gpu, "threads": int(per_actor), "views": views, "topk": topk,
              "pool": None if pool is None else ray.put(np.ascontiguousarray(pool, np.float32))}
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


def soft_target_arrays(ds) -> tuple[np.ndarray, ...]:
    """``(x, y, logits)`` numpy arrays of a materialized soft-target dataset (in order), or with a view
    cache ``(x, y, idx, values, indices, rest)`` in training-set order (sorted by ``idx``, which mixed
    views' partners index): what ``core.views.local_views`` takes."""
    batches = list(ds.iter_batches(batch_size=4096, batch_format="numpy"))
    if not (batches and "rest" in batches[0]):
        return tuple(np.concatenate([b[k] for b in batches]) for k in ("x", "y", "logits"))
    arrays = [np.concatenate([b[k] for b in batches]) for k in ("x", "y", "idx", *VIEW_COLUMNS)]
    order = np.argsort(arrays[2], kind="stable")
    if not np.array_equal(arrays[2][order], np.arange(len(order))):
        raise ValueError(f"the soft-target dataset's idx column is not the training set's rows 0..{len(order) - 1} "
                         "once each (rows lost or repeated), so its views cannot be regenerated")
    in_order = np.array_equal(arrays[2], np.arange(len(order)))  # Ray Data kept the rows' order: no copy
    return tuple(arrays) if in_order else tuple(a[order] for a in arrays)
