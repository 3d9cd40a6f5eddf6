"""Training throughput (samples/s) of the student on the same data, measured in one run:

  (a)  plain single-process PyTorch loop, student alone, 1 thread       <- the baseline (ratio 1.0)
  (a2) the same plain loop with 2 threads (both cores)
  (b)  online KD (teacher forward every step), in-process
  (c)  cached KD (teacher logits computed once), in-process
  (d)  Ray Train cached KD with 1 and 2 workers (steady-state epochs, from the reported epoch times;
       start-up and teardown are reported separately as wall time)

Batch size is per process/worker. Two students: ``mlp128`` (MLP 784-128-10: 102k parameters,
0.1 M multiply-adds per sample, so per-step overheads and DDP's all-reduce of 0.4 MB weigh a lot) and
``cnn_small`` (conv 16/32 channels: 14k parameters, 1 M multiply-adds per sample: compute-bound). Usage:
    .venv/bin/python benchmarks/distill_throughput.py [--student mlp128|cnn_small] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raydistill.artifacts import load_card, new_artifact_path, save_artifact
from raydistill.cards import build_card
from raydistill.config import load_config
from raydistill.data import load_data
from raydistill.engine import KDSettings, fit, predict_logits
from raydistill.models import build_model

SHARED_FASHION = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
STUDENTS = {"mlp128": ("mlp", {"hidden": [128]}), "cnn_small": ("cnn_small", {})}


def timed_fit(bundle, student_spec, *, threads: int, epochs: int, batch: int, kd=None, logits=None,
              teachers=()) -> float:
    """Samples/s of engine.fit on the student ``(model name, args)`` in this process."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = build_model(student_spec[0], bundle.input_shape, bundle.num_classes, student_spec[1])
    start = time.perf_counter()
    fit(student, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-3, batch_size=batch, kd=kd,
        teacher_logits=logits, teachers=teachers)
    return epochs * len(bundle.y_train) / (time.perf_counter() - start)


def ray_fit(cfg_overrides: list[str], workers: int, n_train: int) -> tuple[float, float]:
    """(steady-state samples/s over epochs 2.., wall seconds of the whole fit) of the distill stage."""
    from raydistill.train import distill_student

    cfg = load_config(None, [*cfg_overrides, f"distill.workers={workers}"])
    start = time.perf_counter()
    card = load_card(distill_student(cfg))
    wall = time.perf_counter() - start
    times = [h["epoch_time_s"] for h in card["metrics"]["history"]][1:]  # epoch 1 pulls the shard
    return n_train / float(np.median(times)), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--root", default=str(SHARED_FASHION))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
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
    kd = KDSettings(temperature=4.0, alpha=0.1)
    t0 = time.perf_counter()
    logits = predict_logits(teacher, bundle.x_train)
    logits_s = time.perf_counter() - t0
    run = dict(epochs=args.epochs, batch=args.batch)
    rows = {"(a) plain loop, student alone, 1 thread": timed_fit(bundle, spec, threads=1, **run),
            "(a2) plain loop, student alone, 2 threads": timed_fit(bundle, spec, threads=2, **run),
            "(b) online KD, 1 thread": timed_fit(bundle, spec, threads=1, kd=kd, teachers=[teacher], **run),
            "(c) cached KD, 1 thread": timed_fit(bundle, spec, threads=1, kd=kd, logits=logits, **run)}
    from raydistill.runtime import init_ray

    init_ray("")
    overrides = [*base, f"distill.teacher={teacher_path}"]
    walls = {}
    for workers in (1, 2):
        rate, walls[workers] = ray_fit(overrides, workers, len(bundle.y_train))
        rows[f"(d) Ray Train cached KD, {workers} worker{'s' if workers > 1 else ''}"] = rate
    baseline = rows["(a) plain loop, student alone, 1 thread"]
    print(f"\n{args.dataset}: {len(bundle.y_train)} training samples, student {args.student}, batch {args.batch}/process, "
          f"teacher logits once: {logits_s:.2f} s")
    print(f"{'configuration':<46}{'samples/s':>12}{'vs (a)':>9}")
    for name, rate in rows.items():
        print(f"{name:<46}{rate:>12,.0f}{rate / baseline:>8.2f}x")
    two = rows["(d) Ray Train cached KD, 2 workers"] / rows["(a2) plain loop, student alone, 2 threads"]
    print(f"(d, 2 workers) / (a2, plain loop on both cores) = {two:.2f}x; Ray fit wall incl. start-up: "
          + ", ".join(f"{w} worker(s) {s:.1f} s" for w, s in walls.items()))
    print(json.dumps({"benchmark": "distill_throughput", "dataset": args.dataset, "student": args.student, "samples_per_s": rows,
                      "ratio_d2_vs_a2": two, "ray_wall_s": walls}))


if __name__ == "__main__":
    main()
