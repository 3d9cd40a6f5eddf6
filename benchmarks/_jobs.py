"""Independent trainings of one benchmark run, side by side on the machine's cores.

A benchmark's rows (a teacher per seed, the student alone, each distilled student) are independent
once their inputs exist. ``Jobs(workers=N)`` with N > 1 runs each as a Ray task of one CPU and one
torch thread on a local runtime of N CPUs, a task's inputs being other tasks' results (Ray passes
them on when they are ready); ``Jobs(workers=1)`` runs each at once, here, on ``threads`` threads,
exactly as a plain loop would. Small convolutions use two threads poorly: one epoch of the
``cnn 4/8 fc 256`` student with KD on cached views took 3.6 s on 2 threads and 4.2 s on 1 thread
with another such process beside it (measured here: two 1-thread runs finish 1.7x the epochs of one
2-thread run), so two 1-thread tasks at a time get more done on 2 cores.

    jobs = Jobs(workers=2)
    teacher = jobs.submit(train_teacher, bundle, seed)      # a handle, not the result
    row = jobs.submit(distill, teacher, bundle, seed)       # runs once the teacher is done
    accuracy, seconds = jobs.get(row)
    jobs.close()
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


def _one_thread(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on one torch thread (a Ray task's share of the cores)."""
    torch.set_num_threads(1)
    return fn(*args, **kwargs)


class Jobs:
    """Run functions now (``workers == 1``) or as one-CPU Ray tasks (``workers > 1``); see the module."""

    def __init__(self, workers: int, *, threads: int = 2):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._ray = None
        if workers == 1:
            torch.set_num_threads(threads)
            return
        import ray

        from raydistill.runtime import init_ray

        self._started = not ray.is_initialized()  # close() leaves a runtime it did not start running
        init_ray(num_cpus=workers, dashboard=False)
        self._ray = ray
        self._task = ray.remote(num_cpus=1)(_one_thread)
        log.info("running jobs as Ray tasks: %d at a time, 1 thread each", workers)

    def put(self, value: Any) -> Any:
        """``value`` stored once for many jobs (the object store), or itself in process."""
        return value if self._ray is None else self._ray.put(value)

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``'s result, or a handle to it; ``args`` may be other jobs' handles."""
        return fn(*args, **kwargs) if self._ray is None else self._task.remote(fn, *args, **kwargs)

    def get(self, handle: Any) -> Any:
        """The result behind ``handle`` (waits for it)."""
        return handle if self._ray is None else self._ray.get(handle)

    def close(self) -> None:
        if self._ray is not None and self._started:
            self._ray.shutdown()
        self._ray = None
