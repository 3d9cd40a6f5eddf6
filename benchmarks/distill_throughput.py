"""Training throughput (samples/s) of the student on the same data, measured in one run:

  (a)  plain single-process PyTorch loop, student alone, 1 thread       <- the baseline (ratio 1.0)
  (a2) the same plain loop with 2 threads (both cores)
  (b)  online KD (teacher forward every step), in-process
  (c)  cached KD (teacher logits computed once), in-process; (c2) the same with 2 threads
  (d)  Ray Train cached KD with 1 and 2 workers (steady-state epochs, from the reported epoch times;
       start-up and teardown are reported separately as wall time)
  (e)  plain loop, student alone with augmentation (flips, +-2 px shifts), 1 thread
  (b2) online KD with that augmentation, 1 thread (first pass only, like (b))
  (f)  cached KD on 8 cached views (``distill.cached_views=8``) with the same augmentation, 1 thread:
       the views are regenerated per batch and the targets decoded from fp16; the cache itself
       (8 teacher passes over the data) is timed separately, like the teacher logits of (c)

Every row but (b), (b2) and the 1-worker (d) is measured ``--repeats`` times, interleaved (this VM's
speed drifts by +-10% over minutes); each goal ratio is taken within a pass, then the median over
passes is reported. Batch size is per process/worker. Two students: ``mlp128`` (MLP 784-128-10: 102k parameters,
0.1 M multiply-adds per sample, so per-step overheads and DDP's all-reduce of 0.4 MB weigh a lot) and
``cnn_small`` (conv 16/32 channels: 14k parameters, 1 M multiply-adds per sample: compute-bound). Usage:
    .venv/bin/python benchmarks/distill_throughput.py [--student mlp128|cnn_small] [--epochs 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from raydistill.core.artifacts import load_card, new_artifact_path, save_artifact
from raydistill.core.cards import build_card
from raydistill.core.config import load_config
from raydistill.core.data import load_data
from raydistill.core.engine import KDSettings, fit, predict_logits, teacher_view_cache
from raydistill.core.models import build_model
from raydistill.core.config.schema import AugmentSpec, RecipeSection
from raydistill.core.views import ViewCache

from _paths import FASHION

STUDENTS = {"mlp128": ("mlp", {"hidden": [128]}), "cnn_small": ("cnn_small", {})}


def timed_fit(bundle, student_spec, *, threads: int, epochs: int, batch: int, kd=None, logits=None,
              teachers=(), recipe=None) -> float:
    """Samples/s of engine.fit on the student ``(model name, args)`` in this process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = build_model(student_spec[0], bundle.input_shape, bundle.num_classes, student_spec[1])
    start = time.perf_counter()
    fit(student, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-3, batch_size=batch, kd=kd,
        teacher_logits=logits, teachers=teachers, recipe=recipe)
    return epochs * len(bundle.y_train) / (time.perf_counter() - start)


def ray_fit(cfg_overrides: list[str], workers: int, n_train: int) -> tuple[float, float]:
    """(steady-state samples/s over epochs 2.., wall seconds of the whole fit) of the distill stage."""
    from raydistill.training.driver import distill_student

    cfg = load_config(None, [*cfg_overrides, f"distill.workers={workers}"])
    start = time.perf_counter()
    card = load_card(distill_student(cfg))
    wall = time.perf_counter() - start
    times = [h["epoch_time_s"] for h in card["metrics"]["history"]][1:]  # epoch 1 pulls the shard
    return n_train / float(np.median(times)), wall


A1, A2, C1, C2 = ("(a) plain loop, student alone, 1 thread", "(a2) plain loop, student alone, 2 threads",
                  "(c) cached KD, 1 thread", "(c2) cached KD, 2 threads")
B1, D1, D2 = "(b) online KD, 1 thread", "(d) Ray Train cached KD, 1 worker", "(d) Ray Train cached KD, 2 workers"
E1, F1 = "(e) plain loop, alone, augmented, 1 thread", "(f) cached KD, 8 views, augmented, 1 thread"
B2 = "(b2) online KD, augmented, 1 thread"
PAIRS = {"(c) / (a)": (C1, A1), "(d, 2 workers) / (a2)": (D2, A2), "(d, 2 workers) / (c2)": (D2, C2),
         "(f) / (e)": (F1, E1)}
AUGMENT = AugmentSpec(hflip=True, translate=2)
VIEWS = 8


def timed_views_fit(bundle, student_spec, views: ViewCache, cache, *, epochs: int, batch: int, kd) -> float:
    """Samples/s of engine.fit on cached views (1 thread), the cache built beforehand."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = build_model(student_spec[0], bundle.input_shape, bundle.num_classes, student_spec[1])
    start = time.perf_counter()
    fit(student, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-3, batch_size=batch, kd=kd, views=views,
        view_cache=cache)
    return epochs * len(bundle.y_train) / (time.perf_counter() - start)


def one_repeat(bundle, spec, teacher, teacher_path, logits, views, args, base, *, first: bool) -> tuple[dict, dict]:
    """One pass over every row, in-process rows first (no Ray running), then a fresh Ray runtime
    for the Ray Train rows, shut down again so the next repeat's plain loops run without it."""
    import ray

    from raydistill.runtime import init_ray

    kd = KDSettings(temperature=4.0, alpha=0.1)
    run = dict(epochs=args.epochs, batch=args.batch)
    rows = {A1: timed_fit(bundle, spec, threads=1, **run), C1: timed_fit(bundle, spec, threads=1, kd=kd, logits=logits, **run),
            A2: timed_fit(bundle, spec, threads=2, **run), C2: timed_fit(bundle, spec, threads=2, kd=kd, logits=logits, **run)}
    rows[E1] = timed_fit(bundle, spec, threads=1, recipe=RecipeSection(augment=AUGMENT), **run)
    rows[F1] = timed_views_fit(bundle, spec, *views, kd=kd, **run)
    if first:  # online KD is an order of magnitude off the goal's rows; once is enough
        rows[B1] = timed_fit(bundle, spec, threads=1, kd=kd, teachers=[teacher], **run)
        rows[B2] = timed_fit(bundle, spec, threads=1, kd=kd, teachers=[teacher], recipe=RecipeSection(augment=AUGMENT),
                             **run)
    init_ray("")
    overrides = [*base, f"distill.teacher={teacher_path}"]
    walls = {}
    for workers in (1, 2) if first else (2,):
        rows[D1 if workers == 1 else D2], walls[workers] = ray_fit(overrides, workers, len(bundle.y_train))
    ray.shutdown()
    return rows, walls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=str(FASHION))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved passes over all rows; ratios are paired within a pass, then the median")
    parser.add_argument("--student", choices=list(STUDENTS), default="mlp128")
    args = parser.parse_args()
    spec = STUDENTS[args.student]
    storage = tempfile.mkdtemp(prefix="rd-bench-")
    base = [f"data.name={args.dataset}", f"data.root={args.root}", f"run.storage_path={storage}", "run.quiet=true",
            f"distill.epochs={args.epochs + 1}", f"distill.batch_size={args.batch}",
            f"distill.student.name={spec[0]}", f"distill.student.args={json.dumps(spec[1])}"]
    cfg = load_config(None, base)
    bundle = load_data(cfg.data, cfg.run.seed)
    torch.manual_seed(0)
    teacher = build_model("mlp", bundle.input_shape, bundle.num_classes, {"hidden": [1200, 1200]})
    fit(teacher, bundle.x_train[:5000], bundle.y_train[:5000], epochs=1, lr=1e-3, batch_size=256)
    card = build_card(kind="teacher", model_name="mlp", model_args={"hidden": [1200, 1200]}, bundle=bundle, seed=0,
                      metrics={"test_accuracy": None})
    teacher_path = save_artifact(new_artifact_path(storage, "teacher"), teacher, card)
    t0 = time.perf_counter()
    logits = predict_logits(teacher, bundle.x_train)
    logits_s = time.perf_counter() - t0
    views = ViewCache(views=VIEWS, spec=AUGMENT, fill=(0.0,) * bundle.input_shape[0], seed=0,
                      num_classes=bundle.num_classes)
    t0 = time.perf_counter()
    cache = teacher_view_cache(views, [teacher], torch.as_tensor(bundle.x_train), torch.arange(len(bundle.y_train)),
                               bundle.num_classes)
    cache_s = time.perf_counter() - t0
    passes, walls = [], {}
    for r in range(args.repeats):
        rows, wall = one_repeat(bundle, spec, teacher, teacher_path, logits, (views, cache), args, base, first=r == 0)
        passes.append(rows)
        walls.update(wall)
        print(f"pass {r + 1}/{args.repeats}: " + ", ".join(f"{k} {rows[a] / rows[b]:.2f}x" for k, (a, b) in PAIRS.items()),
              flush=True)
    report(args, bundle, (logits_s, cache_s), passes, walls)


def report(args, bundle, once: tuple[float, float], passes: list[dict], walls: dict) -> None:
    """Median samples/s per row, and each goal ratio as the median of its per-pass ratios."""
    rows = {name: float(np.median([p[name] for p in passes if name in p]))
            for name in (A1, A2, B1, C1, C2, D1, D2, E1, F1, B2)}
    ratios = {k: [p[a] / p[b] for p in passes] for k, (a, b) in PAIRS.items()}
    print(f"\n{args.dataset}: {len(bundle.y_train)} training samples, student {args.student}, batch {args.batch}/process, "
          f"teacher logits once: {once[0]:.2f} s, on {VIEWS} views: {once[1]:.2f} s, "
          f"median of {len(passes)} interleaved passes")
    print(f"{'configuration':<46}{'samples/s':>12}{'vs (a)':>9}")
    for name, rate in rows.items():
        print(f"{name:<46}{rate:>12,.0f}{rate / rows[A1]:>8.2f}x")
    for name, values in ratios.items():
        print(f"{name:<46}{float(np.median(values)):>12.2f}x   per pass: " + " ".join(f"{v:.2f}" for v in values))
    print(f"{'(b2) / (e), first pass only':<46}{passes[0][B2] / passes[0][E1]:>12.2f}x")
    print("Ray fit wall incl. start-up: " + ", ".join(f"{w} worker(s) {s:.1f} s" for w, s in sorted(walls.items())))
    print(json.dumps({"benchmark": "distill_throughput", "dataset": args.dataset, "student": args.student,
                      "samples_per_s": rows, "ratios": ratios, "ray_wall_s": walls,
                      "teacher_logits_s": once[0], "view_cache_s": once[1]}))


if __name__ == "__main__":
    from raydistill.cli.commands import run_script

    raise SystemExit(run_script(main))
