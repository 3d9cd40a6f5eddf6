"""Choosing a cached-views recipe on the validation split: kd on cached views (``distill.cached_views``,
``distill.augment``, mixed views, schedule) side by side with student-alone recipes, every row scored on
the held-out validation split (``data.val_fraction``, 0.1 unless set), never on the test split.

Per seed: one teacher trained on the training split only (``teacher.*`` of the config and ``--set``;
kept in ``--teacher-cache``, under a key that differs from ``kd_methods``' test-run teachers because the
data section does), then each ``--kd`` row (its own view cache, then kd on it) and each ``--alone`` row,
all from the same student initialization and batches (seed), trained by ``engine.fit`` as in
``kd_methods.py`` (``_kd_rows``). A row is ``'NAME: override; override ...'``, the overrides on top of
the common ones (``--set``); they may not change ``data.*`` or ``teacher.*`` (one teacher per seed).
A student-alone row whose augmentation mixes (``distill.augment.mixup``) trains with classic in-batch mixup.

What a row uses: the student, recipe and schedule of ``distill`` (``student``, ``epochs``, ``lr``,
``optimizer``, ``scheduler``, ``batch_size``, ``augment`` — the config's own ``distill.augment`` when a
row does not set it: ``{hflip: true}`` in ``configs/fashion_mnist.yaml``, where ``kd_methods``' plain
alone row has none); a kd row also ``temperature``, ``alpha``, ``method`` and its knobs, ``cached_views``
and ``cache_topk``, on the seed's own teacher (``distill.teacher(s)`` and ``cache_max_gb`` are not read).
An alone row reads no KD key. Every kd row's wall time is its training; its view cache is built before.

    .venv/bin/python benchmarks/kd_val_views.py --seeds 0 1 2 --workers 2 --teacher-cache DIR \\
        --set 'distill.student={name: cnn, args: {channels: [4, 8], fc: 256}}' --set teacher.epochs=24 \\
        --kd 'kd mix0.5: distill.mode=cached; distill.cached_views=8; distill.epochs=180;
              distill.augment={hflip: true, mixup: 0.5}' \\
        --alone 'alone flips: distill.augment={hflip: true}; distill.epochs=30'

Prints each row's validation accuracy per seed, mean ± std, its gain over the best student-alone row of
the same seed, its accuracy on the first 10,000 training examples (underfit or not) and its wall time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from raydistill.core.config import ConfigError, load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, evaluate

from _jobs import Jobs
from _kd_rows import accuracy, cache_job, check_configs, teacher_job, train
from _paths import FASHION
from kd_methods import STUDENT, _ms
from kd_val import TRAIN_PROBE


def parse_row(text: str, flag: str) -> tuple[str, list[str]]:
    """``'NAME: a=1; b=2'`` -> ``('NAME', ['a=1', 'b=2'])``; a row without a name or overrides is refused."""
    name, sep, rest = text.partition(":")
    overrides = [o.strip() for o in rest.split(";") if o.strip()]
    if not sep or not name.strip() or not overrides:
        raise ConfigError(f"{flag} {text!r}: expected 'NAME: override; override ...' "
                          "(e.g. 'alone flips: distill.augment={hflip: true}')")
    return name.strip(), overrides


def row_configs(args, base: list[str]) -> tuple:
    """The common config and each row's ``(name, kind, overrides, config)``; every row is loaded (a bad key is
    refused, named, before any data is read) and must keep the common data and teacher sections."""
    common = load_config(args.config, base)
    if common.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction must be > 0: the rows are scored on the validation split")
    rows = []
    for kind, texts in (("kd", args.kd), ("alone", args.alone)):
        for text in texts:
            name, overrides = parse_row(text, f"--{kind}")
            if name in {r[0] for r in rows}:
                raise ConfigError(f"--{kind} {name!r}: two rows have this name")
            cfg = load_config(args.config, [*base, *overrides])
            for section in ("data", "teacher"):
                if getattr(cfg, section) != getattr(common, section):
                    raise ConfigError(f"--{kind} {name!r}: a row may not change {section}.* (one teacher per seed)")
            if kind == "kd" and not (cfg.distill.mode == "cached" and cfg.distill.cached_views > 0):
                raise ConfigError(f"--kd {name!r}: a kd row runs on cached views: set distill.mode=cached and "
                                  "distill.cached_views=K")
            rows.append((name, kind, overrides, cfg))
    if not any(row[1] == "alone" for row in rows):
        raise ConfigError("give at least one --alone row: each row is compared with the best student-alone row")
    return common, rows


def scores(model, bundle) -> dict:
    """Validation accuracy and accuracy on the first ``TRAIN_PROBE`` training examples."""
    n = TRAIN_PROBE
    return {"val": accuracy(model, bundle, "val"),
            "train": evaluate(model, bundle.x_train[:n], bundle.y_train[:n])["accuracy"]}


def cache_key(d) -> str:
    """What a kd row's view cache depends on besides seed and teacher: rows equal in it share one cache."""
    return json.dumps([dataclasses.asdict(d.augment), d.cached_views, d.cache_topk], sort_keys=True)


def submit_rows(jobs, rows, bundles, seeds, teachers) -> dict[str, list]:
    """Each row's student job per seed (``student_val``), a kd row's after its view cache's build job
    (``cache_job``): one build per distinct ``(cache_key, seed)``, however many kd rows train on it; an alone
    row gets none, even when its distill section names the same cached views. ``rows`` come kd rows first:
    their chains (cache -> kd) are the longest."""
    handles, caches = {}, {}
    for name, kind, _, cfg in rows:
        d = cfg.distill
        for b, s, t in zip(bundles, seeds, teachers):
            key = (cache_key(d), s) if kind == "kd" else None
            if key is not None and key not in caches:
                caches[key] = jobs.submit(cache_job, t, b, s, d, d.cached_views)
            handles.setdefault(name, []).append(jobs.submit(student_val, cfg, b, s, caches.get(key)))
    return handles


def student_val(cfg, bundle, seed: int, built: tuple | None = None) -> dict:
    """A student row: kd on the view cache ``built`` (``cache_job``), or alone (None); scores and seconds."""
    d = cfg.distill
    if built is None:
        model, seconds = train(d.student, bundle, d, seed=seed)
        return scores(model, bundle) | {"s": seconds}
    most, cache, cache_s = built
    kd = KDSettings.for_distill(d)
    model, seconds = train(d.student, bundle, d, seed=seed, kd=kd, views=most, view_cache=cache)
    return scores(model, bundle) | {"s": seconds, "cache_s": cache_s}


def _per_seed(values) -> str:
    """``0.9268 0.9248 0.9287``: one accuracy per seed."""
    return " ".join(f"{v:.4f}" for v in values)


def table(results: dict, teachers: list[dict], seeds: list[int], kinds: dict) -> str:
    """Markdown: each row's validation accuracy, its gain over the best alone row per seed, train accuracy."""
    best = [max(results[n][i]["val"] for n in results if kinds[n] == "alone") for i in range(len(seeds))]
    lines = [f"| row | val accuracy, mean ± std | per seed ({' '.join(map(str, seeds))}) | vs best alone, mean "
             "(per seed) | train acc (first 10k) | wall time per run (median) |", "|---|---:|---|---|---:|---:|",
             f"| teacher | {_ms([t['teacher'] for t in teachers])} | {_per_seed(t['teacher'] for t in teachers)} "
             f"| | | {statistics.median(t['teacher_s'] for t in teachers):.0f} s |"]
    for name, runs in results.items():
        gains = [100 * (r["val"] - b) for r, b in zip(runs, best)]
        lines.append(f"| {name} | {_ms([r['val'] for r in runs])} | {_per_seed(r['val'] for r in runs)} "
                     f"| {statistics.mean(gains):+.2f} pt ({' '.join(f'{g:+.2f}' for g in gains)}) "
                     f"| {statistics.mean(r['train'] for r in runs):.4f} "
                     f"| {statistics.median(r['s'] for r in runs):.0f} s |")
    return "\n".join(lines)


def check_args(args) -> None:
    """The flags' mistakes, before any data is read or teacher trained."""
    for flag, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if len(set(args.seeds)) != len(args.seeds):
        raise ConfigError(f"--seeds must be distinct, got {args.seeds}")
    if args.teacher_cache is not None and args.teacher_cache.exists() and not args.teacher_cache.is_dir():
        raise ConfigError(f"--teacher-cache {args.teacher_cache}: not a folder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="trainings at a time (Ray tasks of 1 CPU, 1 thread)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads with --workers 1")
    parser.add_argument("--teacher-cache", type=Path, default=None,
                        help="a folder to keep each seed's teacher (trained on the training split) in and reuse")
    parser.add_argument("--kd", action="append", default=[], metavar="'NAME: OVERRIDES'",
                        help="a kd-on-cached-views row: overrides separated by ';'")
    parser.add_argument("--alone", action="append", default=[], metavar="'NAME: OVERRIDES'",
                        help="a student-alone row: overrides separated by ';'")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    check_args(args)
    base = [f"data.root={FASHION}", "run.quiet=true", STUDENT, "distill.mode=online", "data.val_fraction=0.1",
            *args.overrides]
    common, rows = row_configs(args, base)
    check_configs(row[3] for row in rows)
    started = time.perf_counter()
    jobs = Jobs(args.workers, threads=args.threads)
    try:
        bundles = [jobs.put(load_data(common.data, seed)) for seed in args.seeds]
        teachers = [jobs.submit(teacher_job, common, b, s, args.teacher_cache, "val")
                    for b, s in zip(bundles, args.seeds)]
        handles = submit_rows(jobs, rows, bundles, args.seeds, teachers)
        results = {}
        for name, hs in handles.items():
            results[name] = [jobs.get(h) for h in hs]
            print(f"{name}: " + json.dumps([{k: round(v, 4) for k, v in r.items()} for r in results[name]]), flush=True)
        teacher_runs = [{k: v for k, v in jobs.get(t).items() if k != "model"} for t in teachers]
    finally:
        jobs.close()
    print(f"\n{common.data.name}, validation split ({common.data.val_fraction:g} of the training set), seeds "
          f"{args.seeds}, {sum(t['teacher_cached'] for t in teacher_runs)} teachers from --teacher-cache; "
          f"{time.perf_counter() - started:.0f} s; "
          + (f"{args.threads} threads" if args.workers == 1 else f"{args.workers} Ray tasks at a time, 1 thread each"))
    print(table(results, teacher_runs, args.seeds, {row[0]: row[1] for row in rows}))
    print(json.dumps({"benchmark": "kd_val_views", "seeds": args.seeds, "overrides": args.overrides,
                      "rows": {name: [kind, overrides] for name, kind, overrides, _ in rows},
                      "teachers": teacher_runs, "results": results}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
