"""``raydistill tune``: a Ray Tune sweep over distillation temperature T and weight alpha (and
optionally the learning rate), ASHA early stopping by default, ending in a chosen student.

Flow of :func:`run_sweep`::

    config checks (search space, searcher; no Ray) -> Ray up -> concurrency cap from cluster CPUs
    -> teacher (trained first if there is none) -> soft targets ONCE (here, or Ray Data) -> object store
    -> Tuner (one trial per point; tuning/trial.py) -> results.csv
    -> best trial's weights -> test accuracy once -> artifact "student", marked chosen
    -> heatmap.png, curves.png, best.yaml, top-k table

A sweep lives in ``<storage>/tune/<run.name>-<time>-<hex>/`` next to Tune's own state, so
``raydistill tune --resume <dir>`` (``Tuner.restore``) finishes it without rerunning finished trials.
In MLflow a sweep is one run with a child run per trial; the chosen student is the ``champion``.
"""
from __future__ import annotations

import logging

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from raydistill.core.artifacts import ArtifactError, list_artifacts, load_card, mark_chosen, resolve_artifact
from raydistill.core.cards import distillation_record
from raydistill.core.config import Config, ConfigError
from raydistill.tracking import Tracker
from raydistill.tuning.inputs import shared_inputs, trainable
from raydistill.tuning.progress import progress_callbacks
from raydistill.tuning.report import (new_sweep_dir, resumed_config, BEST_FILE, CURVES_FILE, HEATMAP_FILE, RESULTS_FILE, best_row, epoch_history,
                          fill_history, missing_epochs, error_message, format_top_table, plot_curves, plot_heatmap, trial_row, write_best_yaml,
                          write_results)
from raydistill.tuning.space import (trial_workers, check_searcher, concurrency_cap, cpus_per_trial, expected_trials, scheduler_and_searcher,
                         search_space)

logger = logging.getLogger(__name__)

__all__ = ["SweepResult", "run_sweep", "run_tune_cli", "ensure_teacher", "concurrency_cap", "expected_trials",
           "check_searcher", "search_space"]

SUMMARY_FILE = "sweep.json"
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


@dataclass
class SweepResult:
    """Where the sweep went, its rows (one per trial), the best row and the chosen artifact.

    ``interrupted`` sweeps have no best row and no artifact yet: resume them.
    """

    sweep_dir: Path
    rows: list[dict]
    best: dict | None = None
    artifact: Path | None = None
    interrupted: bool = False
    timings: dict = dataclasses.field(default_factory=dict)  # seconds per phase
    histories: dict = dataclasses.field(default_factory=dict)  # per-epoch table of each trial, by trial id


# --- the teacher ------------------------------------------------------------------------------


def ensure_teacher(cfg: Config) -> Config:
    """``cfg`` with ``distill.teacher`` pinned to an artifact path; trains a teacher when the config
    names none and storage holds none (``latest:teacher`` would otherwise fail)."""
    from raydistill.core.teachers import teacher_refs

    if cfg.distill.teachers:
        return cfg
    storage = cfg.storage_dir()
    if not cfg.distill.teacher and not list_artifacts(storage, "teacher"):
        from raydistill.core.preflight import preflight
        from raydistill.training.driver import train_teacher

        preflight(cfg, "teacher")
        logger.info(f"tune: no teacher under {storage}; training one first")
        train_teacher(cfg)
    path = resolve_artifact(teacher_refs(cfg)[0].artifact, storage)
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, teacher=str(path.resolve())))


# --- the Tuner ---------------------------------------------------------------------------------


def build_tuner(cfg: Config, fn, sweep_dir: Path, cap: int, callbacks: Sequence = ()):
    from ray import tune

    # Tune snapshots its state every `num_to_keep` trial checkpoints (one per epoch here) and
    # warns when that happens often; on small data sets it does, harmlessly (~10 ms each; the
    # searchers save so that a snapshot cannot break the upload of the one before: tuning/snapshots.py).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    t = cfg.tune
    scheduler, searcher = scheduler_and_searcher(cfg, cap)
    tune_config = tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=scheduler,
                                  search_alg=searcher,  # it holds the concurrency cap (tuning/space.py)
                                  reuse_actors=trial_workers(cfg) == 1)
    run_config = tune.RunConfig(name=sweep_dir.name, storage_path=str(sweep_dir.parent),
                                failure_config=tune.FailureConfig(max_failures=t.max_retries),
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                callbacks=[*callbacks, *progress_callbacks(cfg)], verbose=0)
    return tune.Tuner(fn, param_space=search_space(cfg), tune_config=tune_config, run_config=run_config)


def collect_rows(cfg: Config, sweep_dir: Path) -> tuple[list[dict], dict, dict]:
    """``(rows, histories by trial id, Tune trials by id)`` read back from the sweep's Tune state."""
    from ray.tune import ExperimentAnalysis

    from raydistill.tuning.trial import trial_index

    analysis = ExperimentAnalysis(str(sweep_dir), default_metric=cfg.tune.metric, default_mode=cfg.tune.mode)
    frames = analysis.trial_dataframes
    rows, histories, trials = [], {}, {}
    for trial in analysis.trials:
        history = epoch_history(frames.get(trial.trial_id))
        if missing_epochs(history) and trial.checkpoint is not None:
            history = fill_history(history, best_state(trial).history)
        last = trial.last_result or {}
        rows.append(trial_row(trial_id=trial.trial_id, trial_index=trial_index(trial.trial_id), status=trial.status,
                              config=trial.config, default_lr=cfg.distill.lr,
                              default_method=cfg.distill.method, history=history,
                              metric=cfg.tune.metric, max_epochs=cfg.tune.max_epochs,
                              wall_time_s=last.get("time_total_s", 0.0), retries=trial.num_failures,
                              error=error_message(trial.get_error()) if trial.status == "ERROR" else ""))
        histories[trial.trial_id], trials[trial.trial_id] = history, trial
    return rows, histories, trials


# --- the chosen student ----------------------------------------------------------------------


def best_state(trial):
    """The best trial's final weights: its Tune checkpoint, or its Train run's (multi-worker)."""
    from raydistill.tuning.trial import load_trial_state

    if trial.checkpoint is not None:
        with trial.checkpoint.as_directory() as d:
            return load_trial_state(d)
    path = (trial.last_result or {}).get("checkpoint_path")
    if not path:
        raise ArtifactError(f"trial {trial.trial_id} left no checkpoint under {trial.path}")
    return load_trial_state(path)


def save_chosen(cfg: Config, bundle, teachers, settings, trial, best: dict, sweep_dir: Path) -> Path:
    """Test accuracy measured once on the test split, artifact kind "student", marked chosen."""
    from raydistill.training.driver import finish_artifact, teacher_parents, training_record
    from raydistill.tuning.trial import SEARCHED_KEYS, trial_spec

    state = best_state(trial)
    spec = dataclasses.replace(trial_spec(settings, trial.config), epochs=state.epoch)
    best_config = {k: trial.config[k] for k in SEARCHED_KEYS if k in trial.config}
    extra = {"distillation": {**distillation_record(dataclasses.replace(cfg.distill, method=best["method"])),
                              "temperature": best["temperature"],
                              "alpha": best["alpha"], "mode": "cached"},
             "training": {**training_record(cfg.distill, None, cfg.run.seed), "epochs": state.epoch, "lr": best["lr"]},
             "tune": {"sweep": str(sweep_dir), "trial_id": trial.trial_id, "best_config": best_config,
                      "metric": cfg.tune.metric, "mode": cfg.tune.mode, "score": best["score"]}}
    path = finish_artifact(spec, state, bundle, cfg, kind="student", parents=teacher_parents(teachers), extra=extra)
    mark_chosen(path, cfg.storage_dir())
    return path


# --- entry points ----------------------------------------------------------------------------


def run_sweep(cfg: Config, resume_dir: str | Path | None = None, *, callbacks: Sequence = (),
              tracker: Tracker | None = None) -> SweepResult:
    """Run (or resume) the sweep and finish it: see the module docstring. ``callbacks`` are
    extra ``ray.tune.Callback`` objects (kept in the sweep's state, so also active on resume);
    ``tracker`` holds the MLflow run to nest the sweep's run under (the pipeline's)."""
    from ray import tune

    from raydistill.core.teachers import load_teachers
    from raydistill.tuning.trial import trial_settings

    sweep_dir = Path(resume_dir).expanduser().resolve() if resume_dir else None
    cfg = resumed_config(cfg, sweep_dir) if sweep_dir else cfg
    if sweep_dir and not (sweep_dir / SUMMARY_FILE).is_file() and not tune.Tuner.can_restore(str(sweep_dir)):
        raise ConfigError(f"--resume: {sweep_dir} holds no Tune state to restore")  # before Ray starts
    bundle, cap = start_sweep(cfg)
    if sweep_dir and (sweep_dir / SUMMARY_FILE).is_file():
        return _already_finished(sweep_dir)
    cfg = ensure_teacher(cfg)
    teachers = load_teachers(cfg, bundle)
    sweep_dir = sweep_dir or new_sweep_dir(cfg)
    settings = trial_settings(cfg, bundle, teachers, sweep_dir)
    with (tracker or Tracker.from_config(cfg)).stage(cfg, "tune") as run:
        clock = time.perf_counter()
        fn = trainable(cfg, shared_inputs(cfg, bundle, teachers, settings), settings)
        timings = {"soft_targets_s": time.perf_counter() - clock}
        tuner = (tune.Tuner.restore(str(sweep_dir), trainable=fn, resume_errored=False) if resume_dir
                 else build_tuner(cfg, fn, sweep_dir, cap, callbacks))
        clock = time.perf_counter()
        tuner.fit()
        timings["trials_s"] = time.perf_counter() - clock
        result = finish_sweep(cfg, bundle, teachers, settings, sweep_dir, timings)
        run.log_sweep(result)
    return result


def start_sweep(cfg: Config):
    """Checks without Ray (searcher, data, student), then Ray, then the concurrency cap (printed).
    Returns ``(data bundle, cap)``; raises ConfigError before any trial exists."""
    from raydistill.core.preflight import preflight
    from raydistill.runtime import cluster_cpus, init_ray

    check_searcher(cfg)
    bundle = preflight(cfg, "tune")
    init_ray(cfg.run.address, quiet=cfg.run.quiet)
    cpus = cluster_cpus()
    cap = concurrency_cap(cfg, cpus)
    logger.info(f"tune: {expected_trials(cfg)} trials, at most {cap} at a time (cluster CPUs {cpus:g}, "
          f"{cpus_per_trial(cfg):.2f} CPU per trial, distill.workers={cfg.distill.workers})")
    return bundle, cap


def finish_sweep(cfg: Config, bundle, teachers, settings, sweep_dir: Path, timings: dict) -> SweepResult:
    """results.csv always; the chosen student, plots and best.yaml once every trial has ended."""
    clock = time.perf_counter()
    rows, histories, trials = collect_rows(cfg, sweep_dir)
    interrupted = len(rows) < expected_trials(cfg) or any(r["status"] in UNFINISHED for r in rows)
    best = None if interrupted else best_row(rows, cfg.tune.mode)
    if best is None:
        write_results(rows, sweep_dir)
        why = "interrupted" if interrupted else "finished, but no trial succeeded"
        logger.info(f"tune: sweep {why}; {len(rows)} trial(s) in {sweep_dir / RESULTS_FILE}"
              + (f"\nresume with: raydistill tune --resume {sweep_dir}" if interrupted else ""))
        return SweepResult(sweep_dir, rows, interrupted=interrupted, timings=timings, histories=histories)
    artifact = save_chosen(cfg, bundle, teachers, settings, trials[best["trial_id"]], best, sweep_dir)
    best.update(chosen=True, test_accuracy=load_card(artifact)["metrics"]["test_accuracy"])
    write_results(rows, sweep_dir)
    plot_heatmap(rows, best, sweep_dir / HEATMAP_FILE)
    plot_curves(histories, rows, k=cfg.tune.top_k, mode=cfg.tune.mode, path=sweep_dir / CURVES_FILE)
    write_best_yaml(cfg, best, teacher=cfg.distill.teacher, sweep_dir=sweep_dir)
    timings["report_s"] = time.perf_counter() - clock
    epochs = {"run": int(sum(r["epochs_run"] for r in rows)), "budget": len(rows) * cfg.tune.max_epochs}
    summary = {"sweep": str(sweep_dir), "trials": len(rows), "best": best, "artifact": str(artifact),
               "timings": timings, "trial_epochs": epochs}
    (sweep_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    _print_summary(cfg, rows, best, artifact, sweep_dir, timings, epochs)
    return SweepResult(sweep_dir, rows, best=best, artifact=artifact, timings=timings, histories=histories)


def _print_summary(cfg: Config, rows: list[dict], best: dict, artifact: Path, sweep_dir: Path,
                   timings: dict, epochs: dict) -> None:
    t = cfg.tune
    logger.info("\n" + format_top_table(rows, mode=t.mode, k=t.top_k, metric=t.metric))
    logger.info(f"\nchosen student: {artifact}\n  trial {best['trial_id']}: T={best['temperature']:.3f} "
          f"alpha={best['alpha']:.3f} lr={best['lr']:.2e} {t.metric}={best['score']:.4f} "
          f"test_accuracy={best['test_accuracy']:.4f}\n"
          f"time: soft targets {timings['soft_targets_s']:.1f} s, trials {timings['trials_s']:.1f} s, "
          f"chosen student + report {timings['report_s']:.1f} s; trial-epochs {epochs['run']} of {epochs['budget']} "
          f"({sum(bool(r['early_stopped']) for r in rows)} of {len(rows)} trials stopped early)\n"
          f"sweep files in {sweep_dir}: {RESULTS_FILE} {HEATMAP_FILE} {CURVES_FILE} {BEST_FILE} {SUMMARY_FILE}\n"
          f"run the best config: raydistill distill --config {sweep_dir / BEST_FILE}")


def _already_finished(sweep_dir: Path) -> SweepResult:
    import pandas as pd

    summary = json.loads((sweep_dir / SUMMARY_FILE).read_text())
    rows = pd.read_csv(sweep_dir / RESULTS_FILE, dtype={"error": str}).fillna({"error": ""}).to_dict("records")
    logger.info(f"tune: sweep {sweep_dir} already finished; chosen student {summary['artifact']}")
    return SweepResult(sweep_dir, rows, best=summary["best"], artifact=Path(summary["artifact"]),
                       timings=summary.get("timings", {}))


def run_tune_cli(cfg: Config, args=None) -> int:
    """``raydistill tune --config ... [--resume DIR]``. Exit code 0 = chosen student written,
    130 = interrupted (resume it), 1 = every trial failed."""
    result = run_sweep(cfg, getattr(args, "resume", "") or None)
    return 0 if result.artifact else 130 if result.interrupted else 1
