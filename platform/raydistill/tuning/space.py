"""What a sweep searches and how much of it runs at once, from ``cfg.tune``.

The checks here run before any trial: range rules live in ``core.config.rules._validate_tune``
(empty range, T <= 0, alpha outside [0, 1], ...); this module adds what needs the cluster's
size (:func:`concurrency_cap`) or an optional package (:func:`check_searcher`).
"""
from __future__ import annotations

import math

from raydistill.core.config import Config, ConfigError
from raydistill.runtime import TRIAL_DRIVER_CPUS


def expected_trials(cfg: Config) -> int:
    """``num_samples`` x the size of each grid axis, methods included (how many trials Tune will create)."""
    t = cfg.tune
    n = t.num_samples
    n *= len(t.temperature) if t.temperature_search == "grid" else 1
    n *= len(t.alpha) if t.alpha_search == "grid" else 1
    return n * max(1, len(t.method))


def trial_workers(cfg: Config) -> int:
    """Ray Train workers per trial: ``distill.workers``, with ``auto`` = 1 (an in-process trial; the
    sweep's parallelism comes from running several trials at once)."""
    w = cfg.distill.workers
    return 1 if w == "auto" else int(w)


def cpus_per_trial(cfg: Config) -> float:
    """1 CPU for an in-process trial; the driver's sliver + the rest per Ray Train worker otherwise
    (docs/ray-notes.md: a 0-CPU driver is rejected)."""
    w = trial_workers(cfg)
    return 1.0 if w == 1 else TRIAL_DRIVER_CPUS + (1.0 - TRIAL_DRIVER_CPUS) * w


def concurrency_cap(cfg: Config, cluster_cpus: float) -> int:
    """Trials that can run at once: ``floor(cpus / cpus_per_trial)``, at most ``tune.max_concurrent``
    and the number of trials. Raises ConfigError when even one trial, or the asked-for
    concurrency, could never be scheduled (trials would wait in PENDING forever)."""
    need = cpus_per_trial(cfg)
    fits = int(math.floor(cluster_cpus / need + 1e-9))
    if fits < 1:
        raise ConfigError(f"distill.workers: a trial with {cfg.distill.workers} workers needs {need:.2f} CPUs, "
                          f"the cluster has {cluster_cpus:g}; lower distill.workers")
    asked = cfg.tune.max_concurrent
    if asked > fits:
        raise ConfigError(f"tune.max_concurrent: {asked} trials at once can never be scheduled: the cluster has "
                          f"{cluster_cpus:g} CPUs and each trial needs {need:.2f}; use <= {fits} (or 0 = auto)")
    return max(1, min(asked or fits, expected_trials(cfg)))


def check_searcher(cfg: Config) -> None:
    """The Optuna searcher is an optional extra, imported only when asked for."""
    if cfg.tune.searcher != "optuna":
        return
    try:
        import optuna  # noqa: F401
    except ImportError as exc:
        raise ConfigError("tune.searcher: 'optuna' needs the optional extra: pip install 'raydistill[optuna]'") from exc


def search_space(cfg: Config) -> dict:
    """Tune's ``param_space``: T log-uniform/uniform/grid, alpha uniform/grid, optional log-uniform lr,
    optional grid of ``distill.method`` names (a categorical axis: every method gets the same T/alpha budget)."""
    from ray import tune

    t = cfg.tune
    samplers = {"loguniform": tune.loguniform, "uniform": tune.uniform}
    space = {"temperature": tune.grid_search(list(t.temperature)) if t.temperature_search == "grid"
             else samplers[t.temperature_search](*t.temperature),
             "alpha": tune.grid_search(list(t.alpha)) if t.alpha_search == "grid" else tune.uniform(*t.alpha)}
    if t.lr:
        space["lr"] = tune.loguniform(*t.lr)
    if t.method:
        space["method"] = tune.grid_search(list(t.method))
    return space


def scheduler_and_searcher(cfg: Config, cap: int) -> tuple:
    """ASHA (Li et al. 2020, https://arxiv.org/abs/1810.05934) on the ``epoch`` metric, or None
    (FIFO, full budget); and the searcher, seeded with ``run.seed`` so the same config samples the same
    points, running at most ``cap`` trials at once: Optuna's TPE behind a ``ConcurrencyLimiter``, or
    Tune's random/grid variant generator with ``max_concurrent`` (it ignores Tune's
    ``max_concurrent_trials``, so the cap lives here for both). Both save their state through
    ``tuning.snapshots.StagedSave``."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from raydistill.tuning.snapshots import StagedSearchGenerator, StagedVariantGenerator

    t = cfg.tune
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=t.max_epochs, grace_period=t.grace_period,
                               reduction_factor=t.reduction_factor) if t.scheduler == "asha" else None)
    if t.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return scheduler, StagedSearchGenerator(ConcurrencyLimiter(OptunaSearch(seed=cfg.run.seed), max_concurrent=cap))
    return scheduler, StagedVariantGenerator(max_concurrent=cap, random_state=cfg.run.seed)
