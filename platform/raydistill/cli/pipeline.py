"""The end-to-end run behind ``make demo`` and ``jobs/pipeline.py``:

teacher (Ray Train) -> T x alpha sweep (Ray Tune, ASHA) -> distill the best config with N workers
(Ray Train, cached soft targets from Ray Data) -> the same student alone (baseline) -> deploy the
chosen student (Ray Serve) -> smoke requests over HTTP -> one summary table. In MLflow: one parent run
with a child run per stage (the sweep's trials below its own), the chosen student as ``champion``.
"""
from __future__ import annotations

import logging

import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

from raydistill.core.artifacts import load_card, mark_chosen
from raydistill.core.config import Config
from raydistill.core.data import DataBundle
from raydistill.cli.stages import start
from raydistill.tracking import Tracker

logger = logging.getLogger(__name__)


def summary_rows(paths: dict[str, Path]) -> list[dict]:
    """One row per artifact: accuracy, parameters, size on disk, compression against the teacher."""
    cards = {name: load_card(p) for name, p in paths.items()}
    teacher_params = cards["teacher"]["parameters"]
    return [{"model": name, "architecture": _arch(c), "test_accuracy": c["metrics"]["test_accuracy"],
             "parameters": c["parameters"], "size_kb": (Path(paths[name]) / "weights.pt").stat().st_size / 1024,
             "compression": teacher_params / c["parameters"], "artifact": str(paths[name])}
            for name, c in cards.items()]


def _arch(card: dict) -> str:
    args = card["architecture"]["args"]
    return card["architecture"]["name"] + (str(args["hidden"]) if "hidden" in args else "")


def format_table(rows: list[dict]) -> str:
    header = (f"{'model':<18}{'architecture':<18}{'test acc':>9}{'params':>11}{'size KB':>9}"
              f"{'compression':>13}  artifact")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['model']:<18}{r['architecture']:<18}{r['test_accuracy']:>9.4f}{r['parameters']:>11,}"
                     f"{r['size_kb']:>9.1f}{r['compression']:>12.1f}x  {r['artifact']}")
    return "\n".join(lines)


def _with_distill(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, **changes))


def sweep_best(cfg: Config, tracker: Tracker | None = None):
    """Run the sweep with 1-worker trials (tracked under ``tracker``'s open run); return its
    :class:`~raydistill.tuning.sweep.SweepResult`, whose ``best`` row holds T, alpha, lr, score, ..."""
    from raydistill.tuning.sweep import run_sweep

    result = run_sweep(_with_distill(cfg, workers=1), tracker=tracker)
    if result.best is None:
        raise RuntimeError(f"the sweep in {result.sweep_dir} produced no successful trial")
    return result


def raw_pixels(bundle: DataBundle, n: int) -> list:
    """The first ``n`` test images back in raw pixel units (what a client sends)."""
    mean = np.asarray(bundle.normalization["mean"], np.float32)[None, :, None, None]
    std = np.asarray(bundle.normalization["std"], np.float32)[None, :, None, None]
    return (bundle.x_test[:n] * std + mean).tolist()


def smoke_requests(url: str, bundle: DataBundle, n: int) -> dict:
    """``n`` sequential one-image POSTs to ``/v1/predict``: accuracy on them and median latency."""
    import httpx

    images = raw_pixels(bundle, n)
    latencies, correct = [], 0
    with httpx.Client(timeout=30.0) as client:
        for image, label in zip(images, bundle.y_test[:n]):
            started = time.perf_counter()
            response = client.post(f"{url.rstrip('/')}/v1/predict", json={"instances": [image]})
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            correct += int(response.json()["predictions"][0]["label"] == int(label))
    return {"requests": n, "correct": correct, "p50_ms": 1000 * statistics.median(latencies),
            "max_ms": 1000 * max(latencies)}


def serve_and_probe(cfg: Config, student: Path, bundle: DataBundle) -> dict:
    """Deploy ``student``, send the smoke requests, shut down unless ``pipeline.keep_serving``."""
    from raydistill.runtime import started_local_runtime
    from raydistill.serving.deploy import deploy, stop

    url = deploy(cfg, str(student))
    try:
        probe = smoke_requests(url, bundle, cfg.pipeline.smoke_requests)
    finally:
        if not cfg.pipeline.keep_serving:  # serving is the last stage: a runtime started here can go
            stop(cfg.serve.app_name, shutdown_serve=True, shutdown_ray=started_local_runtime())
    return {"url": url, **probe}


def run_pipeline(cfg: Config, args=None) -> dict:
    """Every stage in order; returns the artifact paths, the best sweep row and the probe."""
    from raydistill.training.driver import distill_student, train_teacher

    bundle = start(cfg, "pipeline")
    tracker = Tracker.from_config(cfg)
    with tracker.stage(cfg, "pipeline") as top:
        with tracker.stage(cfg, "teacher") as run:
            teacher = train_teacher(cfg, bundle=bundle)
            run.log_artifact(teacher)
        cfg = _with_distill(cfg, teacher=str(teacher), teachers=[])
        sweep = sweep_best(cfg, tracker) if cfg.pipeline.tune else None
        best = sweep.best if sweep is not None else None
        if best is not None:
            cfg = _with_distill(cfg, temperature=float(best["temperature"]), alpha=float(best["alpha"]),
                                lr=float(best["lr"]))
        with tracker.stage(cfg, "distill") as run:
            student = distill_student(cfg, bundle=bundle)
            mark_chosen(student, cfg.storage_dir())
            run.log_artifact(student)
            lineage = {"sweep": sweep.sweep_dir, "trial": best["trial_id"]} if sweep is not None else {}
            run.register_champion(student, **lineage)  # the card knows its teacher; the sweep is named here
        alone = {"student-alone": _baseline(cfg, tracker, bundle)} if cfg.pipeline.baseline else {}
        paths = {"teacher": teacher, **alone, "distilled-student": student}
        probe = serve_and_probe(cfg, student, bundle) if cfg.pipeline.serve else None
        if probe:
            top.log(metrics=[(f"smoke_{k}", float(probe[k]), 0) for k in ("p50_ms", "max_ms", "correct")])
        _print_summary(cfg, paths, best, probe)
    return {"paths": paths, "best": best, "probe": probe}


def _baseline(cfg: Config, tracker: Tracker, bundle) -> Path:
    """The student alone, trained with the distill recipe minus the teacher."""
    from raydistill.training.driver import distill_student

    with tracker.stage(cfg, "baseline") as run:
        baseline = distill_student(cfg, baseline=True, bundle=bundle)
        run.log_artifact(baseline)
    return baseline


def _how_it_ran(training: dict) -> str:
    """``in process, 2 threads`` (Ray Train's local mode) or ``2 Ray Train workers x 1 thread``."""
    threads = training.get("threads_per_worker")
    threads_text = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "default threads"
    if training.get("in_process"):
        return f"in process (Ray Train local mode), {threads_text}"
    workers = training["workers"]
    return f"{workers} Ray Train worker{'s' if workers != 1 else ''} x {threads_text}"


def _print_summary(cfg: Config, paths: dict[str, Path], best: dict | None, probe: dict | None) -> None:
    d = cfg.distill
    lines = ["", format_table(summary_rows(paths)), ""]
    source = f"from the sweep (val {best['score']:.4f})" if best else "from the config"
    training = load_card(paths["distilled-student"])["training"]
    lines.append(f"distillation: T={d.temperature:.3g} alpha={d.alpha:.3g} lr={d.lr:.2g} {source}; "
                 f"{_how_it_ran(training)}, {d.mode} soft targets")
    if probe:
        state = "still serving" if cfg.pipeline.keep_serving else "shut down"
        lines.append(f"endpoint: {probe['url']}v1/predict ({state}); {probe['requests']} smoke requests, "
                     f"{probe['correct']} correct, p50 {probe['p50_ms']:.1f} ms, max {probe['max_ms']:.1f} ms")
    lines.append(f"chosen student: {paths['distilled-student']}")
    lines.append(f"artifacts under: {cfg.storage_dir() / 'artifacts'}")
    logger.info("\n".join(lines))
