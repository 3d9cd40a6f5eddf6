"""Starting or attaching to Ray, the one place that decides how.

``address`` (or ``RAY_ADDRESS``) attaches to an existing cluster; otherwise a local runtime is
started on loopback, sized for this machine. An already-initialized runtime (tests, jobs) is reused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

_STARTED_HERE = {"local": False}  # whether init_ray started the (local) runtime this process uses


def _set_defaults() -> None:
    # Ray Train polls worker health every 2 s by default, which makes every report with a
    # checkpoint cost ~2 s on small jobs (docs/ray-notes.md: 43.9 s -> 24.6 s for 10 epochs).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Tune's output engine draws a "Configuration for experiment" box even at verbose=0; the legacy
    # one prints nothing at verbose=0, and the sweep logs its own line per trial (tuning/progress.py)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def init_ray(address: str = "", *, num_cpus: int | None = None, quiet: bool = True, dashboard: bool = True):
    """Return the Ray context, starting or attaching as described in the module docstring.

    ``dashboard=False`` starts a local runtime without the dashboard process: one Ray Train run does
    not need it, and it polls every process's stats (~5% of a core here). Tune over Ray Train does
    (docs/ray-notes.md: stopped trials' resources are not released without it), and so do jobs."""
    _set_defaults()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=not quiet)
    else:
        _local_defaults()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", log_to_driver=not quiet)
    _STARTED_HERE["local"] = not address
    configure_data(ray)
    return ray.get_runtime_context()


def started_local_runtime() -> bool:
    """True when :func:`init_ray` started the runtime this process is connected to (a local one that
    ends with this process): whatever runs on it, Serve included, goes with ``ray.shutdown()``."""
    import ray

    return _STARTED_HERE["local"] and ray.is_initialized()


def _local_defaults() -> None:
    """For a runtime started here (one machine, no spot instances): no Ray Train preemption watcher and
    no Train metrics push. Each is one more Python process (~2.5 CPU-s of start-up, measured) beside
    the workers on the same cores. Set the variables yourself to get them back; clusters keep Ray's defaults."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def configure_data(ray) -> None:
    """Ray Data without progress bars, and in order: the same seed gives the same rows in the same
    order to the workers (cached soft targets come out of a pool of actors), so runs reproduce."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True
    # Ray Data warns once per process that the bars it was told to hide are hidden; mark that one
    # message as already logged (its log_once key), nothing else
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")


def free_local_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it; tests, benchmarks)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cluster_cpus() -> float:
    """Total CPUs the running cluster reports (what concurrency caps are derived from)."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


# A Tune trial that drives a Ray Train run needs a non-zero CPU for itself (0 is rejected) and
# leaves the rest to its workers (docs/ray-notes.md, "Ray Tune").
TRIAL_DRIVER_CPUS = 0.01


@dataclass(frozen=True)
class WorkerPlan:
    """How a stage trains: ``workers`` Ray Train workers of ``cpus`` CPUs each, ``threads`` torch
    intra-op threads per worker (= its whole CPUs), on GPUs or not."""

    workers: int
    cpus: float
    threads: int
    use_gpu: bool
    in_process: bool = False  # Ray Train's local mode: the train function runs in this process


def plan_workers(requested, *, cpus: float, gpus: float, nodes: int, use_gpu: bool,
                 local: bool = False) -> WorkerPlan:
    """Resolve ``workers`` ("auto" or an int) against the cluster; pure, so it is tested without Ray.

    ``auto``: one worker per GPU when GPUs are asked for and present; otherwise one worker per node,
    each with every CPU of its node as torch threads. On this machine alone (``local``: no cluster
    address) a CPU ``auto`` plan runs **in process** (Ray Train's local mode, ``num_workers=0``):
    the same train function and checkpoints without a controller or worker actors, which on a
    laptop cost ~25 s and ~20% of every epoch against the plain loop (README "Stage wall time").
    An explicit ``workers: 1`` keeps a worker actor, which Ray Train restarts if its process dies. On CPUs, DDP between processes that share a
    node's cores only adds a gradient all-reduce per step to the same arithmetic (benchmarks/
    ddp_ceiling.py: 0.57x of one 2-thread process for an MLP, 1.0x at best for a CNN), so threads
    beat workers there. Each worker gets ``cpus / workers`` CPUs (whole CPUs when there are enough).
    """
    gpu = bool(use_gpu and gpus >= 1)
    if requested == "auto" and local and nodes == 1 and not gpu:
        return WorkerPlan(workers=1, cpus=float(cpus), threads=max(1, int(cpus)), use_gpu=False, in_process=True)
    if requested == "auto":
        workers = int(gpus) if gpu else max(1, int(nodes))
    else:
        workers = int(requested)
    per_worker = cpu_share(cpus, workers)
    return WorkerPlan(workers=workers, cpus=per_worker, threads=max(1, int(per_worker)), use_gpu=gpu)


def cpu_share(cpus: float, parts: int) -> float:
    """``cpus / parts``, rounded down to whole CPUs when there is at least one each (Ray schedules
    whole CPUs best), else the fraction; what each worker or actor asks Ray for."""
    share = cpus / max(parts, 1)
    return float(int(share)) if share >= 1 else share


def cluster_nodes() -> int:
    """Alive nodes that offer CPUs (what ``workers: auto`` counts on a CPU cluster)."""
    import ray

    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))


def stage_workers(requested, use_gpu: bool, *, cpus: float | None = None, address: str = "",
                  in_process: bool = True) -> WorkerPlan:
    """:func:`plan_workers` for the running cluster (or, before Ray starts, this machine);
    ``cpus`` caps the budget (runs sharing the cluster); ``in_process=False`` rules that plan out."""
    import ray

    local = in_process and is_local(address)
    if not ray.is_initialized():  # only in-process plans run without Ray (stages.start decides)
        return plan_workers(requested, cpus=cpus or machine_cpus(), gpus=0, nodes=1, use_gpu=use_gpu, local=local)
    budget = cluster_cpus() if cpus is None else cpus
    nodes = 1 if cpus is not None else cluster_nodes()
    return plan_workers(requested, cpus=budget, gpus=cluster_gpus(), nodes=nodes, use_gpu=use_gpu, local=local)


def is_local(address: str = "") -> bool:
    """True when a command runs on this machine alone: no cluster address in the config or in
    ``RAY_ADDRESS`` (Ray jobs set it, so a job on a cluster always plans Ray Train workers)."""
    return not (address or os.environ.get("RAY_ADDRESS", ""))


def runs_in_process(requested, use_gpu: bool, address: str = "") -> bool:
    """Whether a stage with ``workers: requested`` trains in this process (see :func:`plan_workers`);
    decided before Ray starts, so such a stage need not start it."""
    return requested == "auto" and not use_gpu and is_local(address)


def available_cpus() -> float:
    """The running cluster's CPUs, or this machine's when no Ray runtime is up."""
    import ray

    return cluster_cpus() if ray.is_initialized() else float(machine_cpus())


def machine_cpus() -> int:
    """CPUs this process may run on (its affinity mask; what Ray would count on this machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
