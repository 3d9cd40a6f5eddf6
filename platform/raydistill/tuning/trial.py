"""What one Tune trial runs: distill the student at the trial's (T, alpha[, lr]) from soft targets
that the sweep computed once and shared through the object store (``tune.with_parameters``).

Two trainables, both on the shared epoch loop (:func:`raydistill.core.loop.run_epochs`):

* :func:`distill_trial` (``distill.workers == 1``): the loop runs in the trial's own process and
  reports to Tune after every epoch with a checkpoint, so ASHA can stop it and a restored sweep
  resumes it from its last epoch.
* :func:`distill_trial_on_train` (``distill.workers > 1``): the trial is a light driver that runs
  a ``TorchTrainer`` (DDP workers on :func:`raydistill.training.worker.train_loop_per_worker`);
  ``TuneReportCallback`` forwards rank 0's reports to Tune (docs/ray-notes.md, "Ray Tune").
"""
from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from ray import tune

from raydistill.core.engine import KDSettings, iterate_batches, read_only_tensors
from raydistill.core.views import local_views
from raydistill.core.methods import parse_method
from raydistill.core.loop import (STATE_FILE, StageSpec, TrainState, load_train_state, run_epochs, save_train_state,
                                  shuffle_seed, state_from_checkpoint)
from raydistill.training.resume import newest_of, newest_persisted_state

SEARCHED_KEYS = ("temperature", "alpha", "lr", "method")
logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """What every trial shares besides the data: the student recipe and how to run it.

    ``spec.kd`` is filled per trial; ``spec.epochs`` is the sweep's ``tune.max_epochs``.
    """

    spec: StageSpec
    workers: int = 1
    fail_trial: int = -1  # fault injection: the trial with this creation index raises
    train_storage: str = ""  # where Ray Train runs of multi-worker trials keep checkpoints
    ray_logs: bool = False  # run.verbose: Ray Train's INFO lines ("Checkpoint successfully created ...") too


def trial_settings(cfg, bundle, teachers, sweep_dir: Path) -> TrialSettings:
    """What every trial of a sweep of ``cfg`` shares: the student's recipe and ``distill``'s method, over
    ``tune.max_epochs``; ``teachers`` as ``training.driver.load_teachers`` returns them."""
    from raydistill.training.driver import student_spec
    from raydistill.tuning.space import trial_workers

    kd = KDSettings.for_distill(cfg.distill, teacher_weights=[w for *_, w in teachers])  # T, alpha: per trial
    spec = replace(student_spec(cfg, bundle, kd=kd, stage="student"), epochs=cfg.tune.max_epochs)
    return TrialSettings(spec=spec, workers=trial_workers(cfg),
                         fail_trial=cfg.tune.fail_trial, train_storage=str(sweep_dir / "train"),
                         ray_logs=cfg.run.verbose)


def trial_spec(settings: TrialSettings, config: dict) -> StageSpec:
    """The student spec for one point of the search space (``lr`` and ``method`` fall back to ``distill``'s)."""
    kd = replace(settings.spec.kd, temperature=float(config["temperature"]), alpha=float(config["alpha"]))
    if "method" in config:  # a sweep over tune.method
        kd = replace(kd, method=parse_method(config["method"]))
    return replace(settings.spec, kd=kd, lr=float(config.get("lr", settings.spec.lr)))


def trial_index(trial_id: str) -> int | None:
    """Creation index of a trial from its id (``"3f2a1_00004"`` -> 4; random/grid searcher ids)."""
    match = re.fullmatch(r"[0-9a-f]+_(\d+)", trial_id)
    return int(match.group(1)) if match else None


def _fault_hook(settings: TrialSettings):
    """``before_epoch`` hook: the ``tune.fail_trial``-th trial raises before its first epoch on
    every attempt (so ASHA cannot stop it first), exhausting its retries; the sweep carries on."""
    trial_id = tune.get_context().get_trial_id()
    doomed = settings.fail_trial >= 0 and trial_index(trial_id) == settings.fail_trial

    def before_epoch(epoch: int) -> None:
        if doomed:
            raise RuntimeError(f"fault injection: trial {trial_id} (index {settings.fail_trial}) raises "
                               f"at epoch {epoch + 1} (tune.fail_trial)")

    return before_epoch


def _report_to_tune(metrics: dict, state: TrainState) -> None:
    """Report one epoch's metrics with a checkpoint (ASHA decides; restore resumes from it)."""
    with tempfile.TemporaryDirectory() as d:
        save_train_state(state, Path(d) / STATE_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def resume_state() -> TrainState | None:
    """The newest state this trial has: the checkpoint Tune restored it from, or a newer one the
    trial already wrote to its storage that Tune had not yet registered.

    Tune handles a reported checkpoint in two steps (the result, then the save); a sweep stopped
    between them restores the trial from the older checkpoint, and would run that epoch twice.
    """
    return newest_of(state_from_checkpoint(tune.get_checkpoint()),
                     newest_persisted_state(tune.get_context().get_storage()))


def distill_trial(config: dict, *, data: dict[str, tuple[np.ndarray, ...]], settings: TrialSettings) -> None:
    """Function trainable: distill in this process on the shared soft targets.

    ``data["train"]`` is ``(x (N, C, H, W), y (N,), teacher logits (N, K) or (N, T, K))``,
    ``data["val"]`` is ``(x, y)``; both arrive once per node through the object store.
    """
    spec = trial_spec(settings, config)
    if not settings.ray_logs:  # Tune logs "Checkpoint successfully created at ..." per epoch otherwise
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    train, val = read_only_tensors(data["train"]), read_only_tensors(data["val"])
    train, views = local_views(spec.views, train, pool=train[:2])  # with a view cache: (x, y, rows) + the cache
    run_epochs(spec,
               # the same shuffling seeds as a 1-worker `raydistill distill` (rank 0 of world 1)
               train_batches=lambda e: iterate_batches(train, spec.batch_size, shuffle=True,
                                                       seed=shuffle_seed(spec.seed, e)),
               val_batches=lambda: iterate_batches(val, 1024, shuffle=False),
               report=_report_to_tune, resume=resume_state(),
               before_epoch=_fault_hook(settings), views=views)


def distill_trial_on_train(config: dict, *, data: dict[str, tuple[np.ndarray, ...]],
                           settings: TrialSettings) -> None:
    """Function trainable driving ``settings.workers`` Ray Train workers for one trial.

    The Train run is named after the trial, so a restored trial's driver finds its run's
    checkpoints again and Ray Train resumes from the last one.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    import ray
    from raydistill.runtime import TRIAL_DRIVER_CPUS
    from raydistill.training.worker import train_loop_per_worker

    spec = trial_spec(settings, config)
    _fault_hook(settings)(0)  # a doomed driver raises before starting its workers
    trial_id = tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "verbose": False, "ray_logs": settings.ray_logs,
                           "data": {"train": ray.put(tuple(data["train"])), "val": ray.put(tuple(data["val"]))}},
        scaling_config=ScalingConfig(num_workers=settings.workers, resources_per_worker={"CPU": 1.0 - TRIAL_DRIVER_CPUS}),
        run_config=RunConfig(name=f"trial-{trial_id}", storage_path=settings.train_storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=0),
                             callbacks=[TuneReportCallback()]))
    trainer.fit()


def load_trial_state(checkpoint_dir: str | Path) -> TrainState:
    """The :class:`TrainState` in a trial's (or its Train run's) checkpoint directory."""
    return load_train_state(Path(checkpoint_dir) / STATE_FILE)
