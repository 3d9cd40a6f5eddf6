"""Ray Train adapters for the ``teacher`` and ``distill`` stages (the driver side).

Each stage: load data -> Ray Datasets -> ``TorchTrainer`` with N workers (DDP) -> the last
checkpoint -> test accuracy measured once on the driver -> an artifact with its model card.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raydistill.core.artifacts import model_from_state, new_artifact_path, save_artifact, stamped_name
from raydistill.core.cards import build_card, distillation_record, parent_entry
from raydistill.core.config import Config, ConfigError, ModelSpec, TeacherRef
from raydistill.core.config.schema import RecipeSection
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.teachers import load_teachers, teacher_refs
from raydistill.core.data import DataBundle, load_data
from raydistill.core.engine import KDSettings, evaluate
from raydistill.core.hints import Hint, HintError
from raydistill.core.loop import STATE_FILE, StageSpec, TrainState, build_for_spec, load_train_state
from raydistill.core.topk import cache_bytes, resolve_topk
from raydistill.core.views import ViewCache
from raydistill.runtime import WorkerPlan, cluster_cpus, cluster_gpus, stage_workers
from raydistill.training.in_process import fit_in_process
from raydistill.training.resume import record_run
from raydistill.training.soft_targets import compute_soft_targets, soft_target_arrays, to_ray_dataset
from raydistill.training.worker import train_loop_per_worker

logger = logging.getLogger(__name__)


def use_gpu(cfg: Config) -> bool:
    """GPU only when asked for and the cluster has one (the same config runs on a laptop)."""
    return bool(cfg.run.use_gpu and cluster_gpus() > 0)


def fit_stage(spec: StageSpec, data: dict, cfg: Config, *, plan: WorkerPlan, max_failures: int,
              teachers_ref=None, crash_at_epoch: int = -1, run_name: str | None = None) -> TrainState:
    """Run ``spec`` on ``plan.workers`` Ray Train workers of ``plan.cpus`` CPUs and threads each, or
    in this process (``plan.in_process``); ``data`` maps ``train``/``val`` to aligned arrays (object
    refs of them for workers). Returns the final checkpoint's state. ``run_name``: an earlier run of
    this spec to go on with from its newest checkpoint (``--resume``); else a new run is recorded."""
    storage = cfg.storage_dir()
    if run_name is None:
        run_name = stamped_name(spec.stage)
        record_run(storage / "ray_results" / run_name, stage=spec.stage, seed=spec.seed,
                   in_process=plan.in_process, cfg=cfg)
    cache_logits = spec.kd is not None and cfg.distill.mode == "cached"
    loop_config = {"spec": spec, "data": data, "teachers_ref": teachers_ref, "cache_logits": cache_logits,
                   "cache_topk": resolve_topk(cfg.distill.cache_topk, spec.num_classes),
                   "use_gpu": plan.use_gpu,
                   "threads": plan.threads, "verbose": not cfg.run.quiet, "ray_logs": cfg.run.verbose,
                   "crash_at_epoch": crash_at_epoch,
                   "crash_marker": str(storage / "faults" / f"{run_name}.crashed")}
    if plan.in_process:
        return fit_in_process(loop_config, run_dir=storage / "ray_results" / run_name, max_failures=max_failures)
    resources = {"CPU": plan.cpus, **({"GPU": 1} if plan.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=plan.workers, use_gpu=plan.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=run_name, storage_path=str(storage / "ray_results"),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=max_failures)))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{spec.stage}: training ended without a checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        return load_train_state(Path(d) / STATE_FILE)


def finish_artifact(spec: StageSpec, state: TrainState, bundle: DataBundle, cfg: Config, *, kind: str,
                    parents: list[dict], extra: dict) -> Path:
    """Measure test accuracy once, then write the artifact atomically."""
    model = build_for_spec(spec)
    model.load_state_dict(state.model)
    test = evaluate(model, bundle.x_test, bundle.y_test)
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "val_accuracy": state.history[-1]["val_accuracy"] if state.history else None,
               "epochs": state.epoch, "history": state.history, "resumed_at_epochs": state.resumed_at}
    card = build_card(kind=kind, model_name=spec.model_name, model_args=spec.model_args, bundle=bundle,
                      seed=cfg.run.seed, metrics=metrics, parents=parents, **extra)
    return save_artifact(new_artifact_path(cfg.storage_dir(), kind), model, card)


def _datasets(bundle: DataBundle, plan: WorkerPlan, train: tuple | None = None) -> dict:
    """The splits for the train loop. For workers, object refs put once: every worker on a node reads
    the same shared-memory copy and slices its rank's share (measured: Ray Data's streaming split added
    three coordinator actors, ~10 s of start-up and CPU time beside the workers on a 2-core node)."""
    splits = {"train": train or (bundle.x_train, bundle.y_train), "val": (bundle.x_val, bundle.y_val)}
    return _shared(splits, plan)


def _shared(value, plan: WorkerPlan):
    """``value`` as the train loop receives it: itself in process, else through the object store."""
    if plan.in_process:
        return value
    if isinstance(value, dict):
        return {k: ray.put(v) for k, v in value.items()}
    return ray.put(value)


def train_teacher(cfg: Config, *, seed: int | None = None, cpus: float | None = None,
                  bundle: DataBundle | None = None, in_process: bool = True, run_name: str | None = None) -> Path:
    """Train ``cfg.teacher.model`` with Ray Train; returns the teacher artifact's path. ``bundle``:
    the data preflight already loaded (``load_data(cfg.data, cfg.run.seed)``), so it is read once;
    ``in_process=False`` keeps ``workers: auto`` on worker actors (teacher runs side by side)."""
    seed = cfg.run.seed if seed is None else seed
    bundle = load_data(cfg.data, cfg.run.seed) if bundle is None else bundle
    t = cfg.teacher
    spec = recipe_spec("teacher", t, t.model, bundle, seed=seed)
    plan = stage_workers(t.workers, cfg.run.use_gpu, cpus=cpus, address=cfg.run.address, in_process=in_process)
    state = fit_stage(spec, _datasets(bundle, plan), cfg, plan=plan, max_failures=t.max_failures, run_name=run_name)
    return finish_artifact(spec, state, bundle, cfg, kind="teacher", parents=[],
                           extra={"training": training_record(t, plan, seed)})


def recipe_spec(stage: str, recipe: RecipeSection, model: ModelSpec, bundle: DataBundle, *, seed: int,
                kd: KDSettings | None = None) -> StageSpec:
    """The trainer's spec for ``model`` on ``bundle`` with a config section's recipe (teacher or distill)."""
    return StageSpec(stage=stage, model_name=model.name, model_args=model.args, input_shape=bundle.input_shape,
                     num_classes=bundle.num_classes, epochs=recipe.epochs, lr=recipe.lr,
                     batch_size=recipe.batch_size, recipe=recipe, seed=seed, kd=kd,
                     fill=raw_zero_fill(bundle.normalization, bundle.input_shape[0]))


def student_spec(cfg: Config, bundle: DataBundle, *, kd: KDSettings | None, stage: str) -> StageSpec:
    """The student's spec; distilling with ``distill.cached_views`` it carries the view cache's recipe
    (the baseline augments as usual: the same draws' distribution, no teacher)."""
    spec = recipe_spec(stage, cfg.distill, cfg.distill.student, bundle, seed=cfg.run.seed, kd=kd)
    if kd is None or cfg.distill.cached_views <= 0:
        return spec
    views = ViewCache.of_section(cfg.distill, bundle, fill=spec.fill, seed=cfg.run.seed)
    return dataclasses.replace(spec, views=views)


def check_cache_size(cfg: Config, bundle: DataBundle, teachers: int) -> None:
    """A view cache's size, logged before it is built and refused past ``distill.cache_max_gb``."""
    d = cfg.distill
    if d.mode != "cached" or d.cached_views <= 0:
        return
    k = resolve_topk(d.cache_topk, bundle.num_classes)
    size = cache_bytes(len(bundle.y_train), d.cached_views, teachers, k)
    what = (f"{len(bundle.y_train)} examples x {d.cached_views} views x {teachers} teacher(s) x top-{k} of "
            f"{bundle.num_classes} classes = {size / 1e9:.3f} GB")
    if size > d.cache_max_gb * 1e9:
        raise ConfigError(f"distill.cached_views: the view cache would hold {what}, over distill.cache_max_gb="
                          f"{d.cache_max_gb}; lower cached_views or cache_topk, or raise cache_max_gb")
    logger.info(f"distill: soft-target view cache {what}")


def distill_student(cfg: Config, *, baseline: bool = False, bundle: DataBundle | None = None,
                    run_name: str | None = None) -> Path:
    """Distill ``cfg.distill.student`` from the teacher(s); ``baseline=True`` trains it alone
    (same architecture, epochs and data, plain cross-entropy). Returns the artifact path.
    ``bundle`` and ``run_name`` as in :func:`train_teacher` / :func:`fit_stage`."""
    d = cfg.distill
    bundle = load_data(cfg.data, cfg.run.seed) if bundle is None else bundle
    plan = stage_workers(d.workers, cfg.run.use_gpu, address=cfg.run.address)
    if baseline:
        spec = student_spec(cfg, bundle, kd=None, stage="baseline")
        state = fit_stage(spec, _datasets(bundle, plan), cfg, plan=plan, max_failures=d.max_failures,
                          crash_at_epoch=d.crash_at_epoch, run_name=run_name)
        return finish_artifact(spec, state, bundle, cfg, kind="baseline", parents=[],
                               extra={"training": training_record(d, plan, cfg.run.seed)})
    teachers = load_teachers(cfg, bundle)
    kd = KDSettings.for_distill(d, teacher_weights=[w for *_, w in teachers])
    spec = student_spec(cfg, bundle, kd=kd, stage="student")
    if kd.method.hint:
        check_hint(spec, teachers)
    check_cache_size(cfg, bundle, len(teachers))
    datasets, teachers_ref = _distill_inputs(cfg, bundle, teachers, plan)
    state = fit_stage(spec, datasets, _pinned(cfg, teachers), plan=plan, max_failures=d.max_failures,
                      teachers_ref=teachers_ref, crash_at_epoch=d.crash_at_epoch, run_name=run_name)
    parents = teacher_parents(teachers)
    extra = {"distillation": distillation_record(d),
             "training": training_record(d, plan, cfg.run.seed)}
    return finish_artifact(spec, state, bundle, cfg, kind="student", parents=parents, extra=extra)


def check_hint(spec: StageSpec, teachers: Sequence[tuple]) -> None:
    """fitnet: the named layers exist and a connector can map the student's onto the teacher's,
    checked once on the CPU before training starts (ConfigError otherwise)."""
    _, card, state, _ = teachers[0]
    try:
        Hint(build_for_spec(spec), model_from_state(card, state), spec.input_shape,
             student_layer=spec.kd.guided_layer, teacher_layer=spec.kd.hint_layer).remove()
    except HintError as exc:
        raise ConfigError(f"distill.method=fitnet: {exc}") from exc


def _pinned(cfg: Config, teachers: Sequence[tuple]) -> Config:
    """``cfg`` with the teachers it resolved written as paths (what a resumed run must distill from)."""
    refs = [TeacherRef(artifact=str(path), weight=w) for path, _, _, w in teachers]
    d = dataclasses.replace(cfg.distill, teacher=refs[0].artifact if len(refs) == 1 else "",
                            teachers=refs if len(refs) > 1 else [])
    return dataclasses.replace(cfg, distill=d)


def teacher_parents(teachers: Sequence[tuple]) -> list[dict]:
    """Card ``parents`` entries for ``load_teachers`` output, with each weight and its share
    ``w / sum(w)`` (what the loss mixes with, losses.ensemble_soft_targets)."""
    total = sum(w for *_, w in teachers)
    return [parent_entry(p, card, weight=w, normalized_weight=w / total) for p, card, _, w in teachers]


def _distill_inputs(cfg: Config, bundle: DataBundle, teachers: Sequence[tuple],
                    plan: WorkerPlan) -> tuple[dict, object]:
    """Online, or cached with ``distill.soft_targets=workers``: the inputs, and the teacher weights
    (through the object store for workers; cached: each worker computes its share's logits once,
    before epoch 1). Cached with ``ray_data``: soft targets once by a Ray Data actor pool, then
    ``x, y, logits`` as the inputs."""
    pairs = [(card, state) for _, card, state, _ in teachers]
    if cfg.distill.mode == "online" or cfg.distill.soft_targets == "workers":
        return _datasets(bundle, plan), _shared(pairs, plan)
    soft = ray_data_soft_targets(cfg, bundle, pairs, use_gpu=use_gpu(cfg), cpus=cluster_cpus())
    return _datasets(bundle, plan, train=soft_target_arrays(soft)), None


def ray_data_soft_targets(cfg: Config, bundle: DataBundle, pairs: Sequence[tuple[dict, dict]], **resources):
    """The training set with the teachers' logits (or their view cache), by a Ray Data actor pool."""
    views = student_spec(cfg, bundle, kd=KDSettings.for_distill(cfg.distill), stage="student").views
    ds = to_ray_dataset(bundle.x_train, bundle.y_train, with_index=views is not None)
    pool = bundle.x_train if views is not None and views.spec.mixup > 0 else None  # mixed views' partners
    return compute_soft_targets(ds, pairs, actors=cfg.distill.soft_target_actors, views=views, pool=pool,
                                topk=resolve_topk(cfg.distill.cache_topk, bundle.num_classes), **resources)


def training_record(recipe: RecipeSection, plan: WorkerPlan | None, seed: int) -> dict:
    """The card's ``training`` section: the whole recipe plus how it ran (workers x threads)."""
    record = {k: v for k, v in dataclasses.asdict(recipe).items() if k in RECIPE_KEYS}
    record.update(seed=seed, workers=plan.workers if plan else 1, threads_per_worker=plan.threads if plan else None,
                  in_process=bool(plan and plan.in_process))
    return record


RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(RecipeSection) if f.name not in ("max_failures",))


__all__ = ["train_teacher", "distill_student", "fit_stage", "finish_artifact", "load_teachers", "teacher_refs",
           "teacher_parents", "training_record"]
