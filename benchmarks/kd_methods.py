"""Distillation methods on Fashion-MNIST: the student alone vs kd, dkd, kd+lskd, dkd+lskd, fitnet, and
kd on cached augmented views (``distill.cached_views`` = 1/4/8).

Per seed: one teacher (the config's: ``cnn`` 32-64-128 unless ``--set teacher.model...``, its recipe
with flips and shifts), then from the same student initialization and batches (seed), each row's
student (``distill.student``: a ``cnn`` with channels 8-16 and a 24-unit fc layer unless
``--set distill.student=...``), at least 20x smaller than the teacher (checked), trained with the
config's ``distill`` recipe (Adam, cosine) for ``--student-epochs`` epochs. Two recipes:

- **no augmentation**: the student alone and the logit methods on the teacher's logits computed once
  (cached, as ``distill.mode=cached``); ``fitnet`` runs the teacher online (it needs its features);
- **augmented** (the teacher's flips and +-2 px shifts): the student alone with them, and ``kd`` on
  the teacher's logits cached on V seeded views per example (core.views), V = 1, 4, 8; the V-view
  cache is the first V views of the 8-view one (a view is a function of seed, example and view).
  ``--views-augment`` gives these two rows another augmentation and ``--views-epochs`` another
  schedule (a "patient" one: Beyer et al. 2022), the student alone always with the same as kd.

Every method uses the config's T and alpha (``--set distill.temperature=...`` to use another, e.g.
the one ``kd_val.py`` chose on the validation split) and the methods' own defaults (``distill.dkd_*``,
``distill.hint_*``): nothing is chosen on the test split, and nothing is tuned here at all. Each
row is compared with the student alone trained with the same recipe, and the goal with the best
of the student-alone rows: the two above, and with ``--alone-augment`` one more augmentation for the
student alone (e.g. ``'{hflip: true}'``, a recipe the validation split found better for it).

In process (``engine.fit``, the loss the Ray Train stage runs per batch), no Ray.

    python benchmarks/kd_methods.py [--seeds 0 1 2] [--student-epochs 10] [--rows kd dkd ...] [--teacher-cache DIR]
        [--alone-augment '{hflip: true}'] [--views-augment '{hflip: true}'] [--views-epochs 120] [--set distill.temperature=1 ...]

Goal (issue 16): the best method beats the student alone by >= 1.0 pt on the mean and on every seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from raydistill.core.config import ModelSpec, load_config
from raydistill.core.config.schema import AugmentSpec
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate, fit, predict_logits
from raydistill.core.models import build_model, count_parameters
from raydistill.core.recipe import raw_zero_fill
from raydistill.core.views import ViewCache, resolve_topk

FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
STUDENT = "distill.student={name: cnn, args: {channels: [8, 16], fc: 24}}"  # the default, before --set
METHODS = ("kd", "dkd", "kd+lskd", "dkd+lskd", "fitnet")
VIEWS = (1, 4, 8)
AUG_ROWS = tuple(f"kd views={v}" for v in VIEWS)
ROWS = (*METHODS, *AUG_ROWS)  # the distilled rows; "alone" and "alone+aug" are their baselines
ALONE = ("alone", "alone+aug", "alone+other")  # the student-alone rows; "alone+other": --alone-augment


def describe(spec: ModelSpec) -> str:
    """``cnn 32-64 fc 1024``, ``mlp 200``: a model spec as the table names it."""
    args = spec.args
    if "channels" in args:
        fc = f" fc {args['fc']}" if "fc" in args else ""
        return f"{spec.name} {'-'.join(map(str, args['channels']))}{fc}"
    if "hidden" in args:
        return f"{spec.name} {'-'.join(map(str, args['hidden']))}"
    return f"{spec.name} {args}"


def _train(spec: ModelSpec, bundle, section, *, seed: int, kd=None, logits=None, teachers=(), views=None,
           view_cache=()) -> tuple[torch.nn.Module, float]:
    """A fresh ``spec`` (init from ``seed``) trained in process with ``section``'s recipe; (model, seconds)."""
    torch.manual_seed(seed)
    model = build_model(spec.name, bundle.input_shape, bundle.num_classes, spec.args)
    started = time.perf_counter()
    fit(model, bundle.x_train, bundle.y_train, epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
        seed=seed, recipe=section, kd=kd, teacher_logits=logits, teachers=teachers,
        fill=raw_zero_fill(bundle.normalization, bundle.input_shape[0]), views=views, view_cache=view_cache)
    return model.eval(), time.perf_counter() - started


def _accuracy(model, bundle) -> float:
    return evaluate(model, bundle.x_test, bundle.y_test)["accuracy"]


def teacher_for(cfg, bundle, seed: int, cache: Path | None) -> tuple[torch.nn.Module, float, bool]:
    """The seed's teacher (init and batches from ``1000 + seed``), the seconds its training took, and
    whether it came from ``cache``.

    With ``cache``, a teacher trained earlier with the same teacher and data sections, seed and torch
    version is loaded from ``cache/teacher-<sha256 of those>.pt`` (tensors only: ``weights_only``) and
    its recorded training time reported; otherwise it is trained and stored there."""
    key = json.dumps([dataclasses.asdict(cfg.teacher), dataclasses.asdict(cfg.data), seed, torch.__version__],
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
    teacher, seconds = _train(cfg.teacher.model, bundle, cfg.teacher, seed=1000 + seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": teacher.state_dict(), "seconds": seconds}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # whole or absent: a killed run leaves no half teacher
    return teacher, seconds, False


def one_seed(cfg, bundle, seed: int, views_recipe, rows=ROWS, teacher_cache: Path | None = None,
             alone_augment: AugmentSpec | None = None) -> dict:
    """Teacher, then each of ``rows``' students (and their student-alone baselines; with
    ``alone_augment`` one more, trained with that augmentation) from the same init; test accuracies
    and wall times. ``views_recipe``: the ``distill`` section of the augmented rows (``_views_recipe``)."""
    teacher, t_time, cached = teacher_for(cfg, bundle, seed, teacher_cache)
    logits = predict_logits(teacher, bundle.x_train)  # (N, C), once: the logit methods' cached targets
    d, student = cfg.distill, cfg.distill.student
    alone, alone_time = _train(student, bundle, d, seed=seed)
    ratio = count_parameters(teacher) / count_parameters(alone)
    assert ratio >= 20, f"the student must be >= 20x smaller than the teacher, got {ratio:.1f}x"
    out = {"teacher": _accuracy(teacher, bundle), "teacher_s": t_time, "teacher_cached": cached,
           "alone": _accuracy(alone, bundle), "alone_s": alone_time, "ratio": ratio}
    for method in (m for m in METHODS if m in rows):
        kd = KDSettings.for_distill(dataclasses.replace(d, method=method))
        online = method == "fitnet"
        model, seconds = _train(student, bundle, d, seed=seed, kd=kd, logits=None if online else logits,
                                teachers=[teacher] if online else ())
        out[method], out[f"{method}_s"] = _accuracy(model, bundle), seconds
    if any(row in rows for row in AUG_ROWS):
        out.update(augmented_rows(bundle, teacher, seed, views_recipe, rows))
    if alone_augment is not None:
        model, seconds = _train(student, bundle, dataclasses.replace(d, augment=alone_augment), seed=seed)
        out["alone+other"], out["alone+other_s"] = _accuracy(model, bundle), seconds
    return out


def augmented_rows(bundle, teacher, seed: int, d, rows=AUG_ROWS) -> dict:
    """The student alone with the ``distill`` section ``d`` (its augmentation and epochs), then ``kd``
    with it on 1/4/8 cached views of that augmentation (those of the ``kd views=V`` rows in ``rows``)."""
    wanted = [(views, row) for views, row in zip(VIEWS, AUG_ROWS) if row in rows]
    student = d.student
    model, seconds = _train(student, bundle, d, seed=seed)
    out = {"alone+aug": _accuracy(model, bundle), "alone+aug_s": seconds}
    fill = raw_zero_fill(bundle.normalization, bundle.input_shape[0])
    started = time.perf_counter()
    most = ViewCache(views=max(v for v, _ in wanted), spec=d.augment, fill=fill, seed=seed, num_classes=bundle.num_classes)
    with torch.no_grad():
        cache = most.build(teacher, torch.as_tensor(bundle.x_train), torch.arange(len(bundle.y_train)),
                           resolve_topk(d.cache_topk, bundle.num_classes))
    out["cache_s"] = time.perf_counter() - started
    kd = KDSettings.for_distill(dataclasses.replace(d, method="kd"))
    for views, row in wanted:
        model, seconds = _train(student, bundle, d, seed=seed, kd=kd, views=dataclasses.replace(most, views=views),
                                view_cache=[c[:, :views] for c in cache])
        out[row], out[f"{row}_s"] = _accuracy(model, bundle), seconds
    return out


def baseline(row: str) -> str:
    """The student-alone row trained with ``row``'s recipe."""
    return "alone+aug" if row in AUG_ROWS else "alone"


def _ms(values) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def table(results: list[dict], seeds: list[int], teacher_name: str, other: str = "") -> str:
    lines = [f"| row | test accuracy, mean ± std | per seed ({' '.join(map(str, seeds))}) | vs alone, same recipe | "
             "seeds won/lost | wall time per run (median) |", "|---|---:|---|---:|---:|---:|"]
    teacher = [r["teacher"] for r in results]
    lines.append(f"| teacher ({teacher_name}) | {_ms(teacher)} | {' '.join(f'{a:.4f}' for a in teacher)} | | | "
                 f"{statistics.median(r['teacher_s'] for r in results):.0f} s |")
    names = row_names(other)
    for row in (r for r in ("alone", *METHODS, "alone+aug", *AUG_ROWS, "alone+other") if r in results[0]):
        acc = [r[row] for r in results]
        base = [r[baseline(row)] for r in results]
        won = sum(a > b for a, b in zip(acc, base))
        lost = sum(a < b for a, b in zip(acc, base))
        gap = 100 * (statistics.mean(acc) - statistics.mean(base))
        own = row in names
        lines.append(f"| {names.get(row, row)} | {_ms(acc)} | {' '.join(f'{a:.4f}' for a in acc)} | "
                     f"{'' if own else f'{gap:+.2f} pt'} | {'' if own else f'{won}/{lost}'} | "
                     f"{statistics.median(r[f'{row}_s'] for r in results):.0f} s |")
    return "\n".join(lines)


def row_names(other: str = "") -> dict[str, str]:
    """The student-alone rows as the table prints them (method rows print their own key)."""
    return {"alone": "student alone", "alone+aug": "student alone, augmented", "alone+other": f"student alone, {other}"}


def verdict(results: list[dict], other: str = "") -> str:
    """The goal, for the best row on the mean (reported, not used to choose anything), against the
    best student-alone recipe (on the mean): distillation must beat the best the student does alone.
    Gap per seed: 100 * (acc[best] - acc[alone]) in points; met when their mean and minimum are >= 1.0."""
    alone = max((a for a in ALONE if a in results[0]), key=lambda a: statistics.mean(r[a] for r in results))
    best = max((m for m in ROWS if m in results[0]), key=lambda m: statistics.mean(r[m] for r in results))
    gaps = [100 * (r[best] - r[alone]) for r in results]
    both = "alone+aug" in results[0]  # without it the better alone recipe is unknown: never "met"
    met = statistics.mean(gaps) >= 1.0 and min(gaps) >= 1.0 and both
    name = row_names(other)[alone]
    return (f"goal: best method beats the student alone by >= 1.0 pt on the mean and every seed -> {best} vs {name}: "
            f"mean {statistics.mean(gaps):+.2f} pt, per seed {' '.join(f'{g:+.2f}' for g in gaps)}: "
            f"{'met' if met else 'NOT met'} ({name} {_ms([r[alone] for r in results])})"
            + ("" if both else "; the augmented student alone was not run (no `kd views=V` row), so the goal is not checked"))


def augment_name(spec: AugmentSpec | None) -> str:
    """``flips``, ``flips and +-2 px shifts``: ``--alone-augment`` as the table names its row."""
    if spec is None:
        return ""
    parts = (["flips"] if spec.hflip else []) + ([f"+-{spec.translate} px shifts"] if spec.translate else [])
    return " and ".join(parts) or "no augmentation"


def _distill_with(args, overrides: list[str], **values):
    """The config's ``distill`` section with ``values`` (``augment='{hflip: true}'``, ``epochs=120``;
    None: left as configured) set through the config loader, so a bad one is refused, naming its key,
    before any data is read."""
    extra = [f"distill.{key}={value}" for key, value in values.items() if value is not None]
    return load_config(args.config, [*overrides, *extra]).distill


def _views_recipe(args, overrides: list[str], teacher_augment: AugmentSpec):
    """The augmented rows' ``distill`` section: ``--views-augment`` (default: the teacher's
    augmentation) and ``--views-epochs`` (default: ``--student-epochs``)."""
    d = _distill_with(args, overrides, augment=args.views_augment, epochs=args.views_epochs)
    return d if args.views_augment is not None else dataclasses.replace(d, augment=teacher_augment)


def _cache_line(results: list[dict]) -> str:
    if "cache_s" not in results[0]:
        return "no view cache: augmented rows not run"
    return f"view cache built in {statistics.median(r['cache_s'] for r in results):.0f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="distilled rows to run (default: all); their student-alone baselines always run")
    parser.add_argument("--teacher-cache", type=Path, default=None,
                        help="a folder to keep each seed's trained teacher in and reuse it from (its wall time is "
                             "the one recorded when it was trained)")
    parser.add_argument("--alone-augment", default=None, metavar="YAML",
                        help="one more student-alone row, trained with this augmentation (a distill.augment "
                             "value, e.g. '{hflip: true}'); the goal is checked against the best alone row")
    parser.add_argument("--views-augment", default=None, metavar="YAML",
                        help="the augmentation of the augmented rows (the student alone and kd on cached views; "
                             "a distill.augment value; default: the teacher's)")
    parser.add_argument("--views-epochs", default=None, metavar="N",
                        help="epochs of the augmented rows (default: --student-epochs): a longer, 'patient' "
                             "schedule on cached views, against the student alone with the same schedule")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = [f"data.root={FASHION}", "run.quiet=true", STUDENT, "distill.mode=online", f"distill.epochs={args.student_epochs}"]
    cfg = load_config(args.config, [*base, *args.overrides])
    other = (None if args.alone_augment is None else
             _distill_with(args, [*base, *args.overrides], augment=args.alone_augment).augment)
    views = _views_recipe(args, [*base, *args.overrides], cfg.teacher.augment)
    cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, augment=AugmentSpec()))
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        bundle = load_data(cfg.data, seed)
        results.append(one_seed(cfg, bundle, seed, views, args.rows, args.teacher_cache, other))
        print(f"seed {seed}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in results[-1].items()}), flush=True)
    d = cfg.distill
    print(f"\n{cfg.data.name}: teacher {describe(cfg.teacher.model)} ({cfg.teacher.epochs} epochs), "
          f"student {describe(d.student)} ({results[0]['ratio']:.1f}x fewer parameters), {d.epochs} epochs "
          f"{d.optimizer} lr {d.lr} {d.scheduler}, no augmentation / augmented {dataclasses.asdict(views.augment)} "
          f"({views.epochs} epochs) "
          f"({_cache_line(results)}); T={d.temperature} alpha={d.alpha} "
          f"dkd {d.dkd_alpha}/{d.dkd_beta} hint_weight {d.hint_weight}; seeds {args.seeds} "
          f"({sum(r['teacher_cached'] for r in results)} teachers from --teacher-cache); "
          f"{time.perf_counter() - started:.0f} s; {args.threads} threads")
    print(table(results, args.seeds, describe(cfg.teacher.model), augment_name(other)))
    print(verdict(results, augment_name(other)))
    print(json.dumps({"benchmark": "kd_methods", "seeds": args.seeds, "results": results}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
