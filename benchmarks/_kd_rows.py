"""The trainings of ``kd_methods.py``'s rows, each a job (``_jobs.Jobs``: in process, or a Ray
task of one CPU): a seed's teacher (kept in ``--teacher-cache``), a student alone, a student distilled
with a method on the teacher's logits or online, and kd on cached augmented views (core.views).

Every student starts from the same initialization (``seed``) and sees the same batches; each job
returns (test accuracy, seconds of training).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from raydistill.core.config import ModelSpec
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits, teacher_view_cache
from raydistill.core.models import build_model
from raydistill.core.preflight import preflight
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.topk import resolve_topk
from raydistill.core.views import ViewCache


def check_configs(configs) -> None:
    """What the stages check before any work (core.preflight), for each config a benchmark trains from
    (one data section, loaded once): the data on disk and its splits, augmentation that fits the images,
    the teacher and student models (the checks of ``compress-report``, the in-process stage that trains
    both). A bad value is refused, named, before any teacher trains."""
    bundle = None
    for cfg in configs:
        bundle = preflight(cfg, "compress-report", bundle)


def train(spec: ModelSpec, bundle, section, *, seed: int, kd=None, logits=None, teachers=(), views=None,
          view_cache=()) -> tuple[torch.nn.Module, float]:
    """A fresh ``spec`` (init from ``seed``) trained in process with ``section``'s recipe; (model, seconds)."""
    torch.manual_seed(seed)
    model = build_model(spec.name, bundle.input_shape, bundle.num_classes, spec.args)
    started = time.perf_counter()
    fit(model, bundle.x_train, bundle.y_train, epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
        seed=seed, recipe=section, kd=kd, teacher_logits=logits, teachers=teachers,
        fill=raw_zero_fill(bundle.normalization, bundle.input_shape[0]), views=views, view_cache=view_cache,
        num_classes=bundle.num_classes)
    return model.eval(), time.perf_counter() - started


def accuracy(model, bundle, split: str = "test") -> float:
    """``model``'s accuracy on ``bundle``'s ``split`` (``test``, or ``val`` when choosing without it)."""
    return evaluate(model, getattr(bundle, f"x_{split}"), getattr(bundle, f"y_{split}"))["accuracy"]


def _recipe_key(section) -> dict:
    """``section`` as a dict for the teacher cache's key, without options added after teachers were
    cached while they are at their defaults (``augment.cutout = 0``, ``mixup = 0``, ``mixup_alpha = 1``):
    a teacher trained before an option existed trained exactly as one trained with it off, so its
    cached file stays valid."""
    out = dataclasses.asdict(section)
    for key, off in (("cutout", 0), ("mixup", 0.0)):
        if out["augment"][key] == off:
            del out["augment"][key]
    if "mixup" not in out["augment"]:  # Beta's a means nothing without mixup
        del out["augment"]["mixup_alpha"]
    return out


def teacher_for(cfg, bundle, seed: int, cache: Path | None) -> tuple[torch.nn.Module, float, bool]:
    """The seed's teacher (init and batches from ``1000 + seed``), the seconds its training took, and
    whether it came from ``cache``.

    With ``cache``, a teacher trained earlier with the same teacher and data sections, seed and torch
    version is loaded from ``cache/teacher-<sha256 of those>.pt`` (tensors only: ``weights_only``) and
    its recorded training time reported; otherwise it is trained and stored there."""
    key = json.dumps([_recipe_key(cfg.teacher), dataclasses.asdict(cfg.data), seed, torch.__version__],
                     sort_keys=True, default=str)
    path = cache / f"teacher-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache else None
    if path is not None and path.exists():
        spec = cfg.teacher.model
        teacher = build_model(spec.name, bundle.input_shape, bundle.num_classes, spec.args)
        try:
            saved = torch.load(path, weights_only=True)
            teacher.load_state_dict(saved["state"])
            return teacher.eval(), float(saved["seconds"]), True
        except Exception as error:  # noqa: BLE001 - unreadable or another shape: train it again
            why = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"seed {seed}: cached teacher {path} unusable ({why}); training it", flush=True)
    teacher, seconds = train(cfg.teacher.model, bundle, cfg.teacher, seed=1000 + seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": teacher.state_dict(), "seconds": seconds}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # whole or absent: a killed run leaves no half teacher
    return teacher, seconds, False


def teacher_job(cfg, bundle, seed: int, cache: Path | None, split: str = "test") -> dict:
    """The seed's teacher (``teacher_for``) and its accuracy on ``split``."""
    teacher, seconds, cached = teacher_for(cfg, bundle, seed, cache)
    return {"model": teacher, "teacher": accuracy(teacher, bundle, split), "teacher_s": seconds,
            "teacher_cached": cached}


def logits_job(teacher: dict, bundle) -> torch.Tensor:
    """The teacher's logits ``(N, C)`` on the clean training images, once per seed: the logit methods'
    cached targets (as ``distill.mode=cached``)."""
    return torch.as_tensor(predict_logits(teacher["model"], bundle.x_train))


def row_job(spec: ModelSpec, bundle, section, seed: int, *, method: str | None = None, logits=None,
            teacher: dict | None = None, views: ViewCache | None = None, view_cache=()) -> tuple[float, float]:
    """One student row: (test accuracy, seconds). ``method``: a logit method on ``logits`` (``logits_job``),
    ``fitnet`` online on ``teacher``, or ``kd`` on cached ``views``; None: the student alone."""
    kd = None if method is None else KDSettings.for_distill(dataclasses.replace(section, method=method))
    online = [teacher["model"]] if teacher is not None else []
    model, seconds = train(spec, bundle, section, seed=seed, kd=kd, logits=logits, teachers=online, views=views,
                           view_cache=view_cache)
    return accuracy(model, bundle), seconds


def cache_job(teacher: dict, bundle, seed: int, d, views: int) -> tuple[ViewCache, list, float]:
    """The teacher's logits on ``views`` seeded views of ``d.augment`` per example: (ViewCache, cache, seconds)."""
    started = time.perf_counter()
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    most = ViewCache.of_section(d, bundle, fill=fill, seed=seed, views=views)
    x = torch.as_tensor(bundle.x_train)
    cache = teacher_view_cache(most, [teacher["model"]], x, torch.arange(len(bundle.y_train)),
                               resolve_topk(d.cache_topk, bundle.num_classes), pool=x)
    return most, cache, time.perf_counter() - started


def views_job(built: tuple, spec: ModelSpec, bundle, seed: int, d, views: int) -> tuple[float, float]:
    """kd on the first ``views`` views of the cache ``built`` (a view is a function of seed, example, view)."""
    most, cache, _ = built
    return row_job(spec, bundle, d, seed, method="kd", views=dataclasses.replace(most, views=views),
                   view_cache=[c[:, :views] for c in cache])
