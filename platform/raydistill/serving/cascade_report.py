"""``raydistill cascade-report``: what the confidence cascade buys, measured over HTTP on the test split
(``--split val``: the validation split, to choose a threshold without looking at the test split).

The student (``--artifact``, default ``serve.artifact``) is deployed with its teacher behind it
(``serve.cascade_teacher``, default ``latest:teacher``; at least one teacher replica, so the rows do
not include a cold start), and the teacher alone as a second application. For each threshold of
``serve.cascade_metric`` (set at run time through ``user_config``: no replica restart):

- **accuracy** and **fraction escalated** over the whole test split, sent as raw pixels in requests
  of ``BATCH`` instances (what a client would send: ``x_raw = x * std_c + mean_c``);
- **mean / p99 latency** of ``--latency-requests`` sequential one-instance requests, client-side.

Threshold 0 never escalates: that row is the student alone, behind the same HTTP path. The
recommended threshold is the one with the least escalation whose accuracy reaches
``--target-accuracy`` (default: the teacher's, less 0.2 pt). Writes ``report.csv``, ``report.md``
and ``report.png`` (accuracy vs fraction escalated, the teacher's accuracy as a line) under
``<storage>/cascade/<run>/``.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from raydistill.core.artifacts import stamped_name
from raydistill.core.config import Config, ConfigError
from raydistill.core.data import load_data

logger = logging.getLogger(__name__)

THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
BATCH = 64  # instances per accuracy request
TEACHER_APP, CASCADE_APP = "cascade-report-teacher", "cascade-report"


@dataclass
class Row:
    """One line of the report: a threshold of the cascade, or the teacher alone."""

    name: str
    threshold: float | None
    accuracy: float
    escalated: float  # fraction of the split's instances the teacher answered (or was asked to)
    failed: int  # escalations the teacher did not answer in time
    mean_ms: float
    p99_ms: float


def raw_pixels(x: np.ndarray, norm: dict) -> np.ndarray:
    """Invert ``data.normalize``: ``x * std_c + mean_c`` ``(N, C, H, W)``, what a client sends."""
    mean = np.asarray(norm["mean"], np.float32)[None, :, None, None]
    std = np.asarray(norm["std"], np.float32)[None, :, None, None]
    return x * std + mean


def measure(client, url: str, x_raw: np.ndarray, y: np.ndarray, *, latency_requests: int) -> dict:
    """Accuracy, fraction escalated and failures over ``x_raw``; then single-instance latencies (ms)."""
    correct = escalated = failed = 0
    for start in range(0, len(x_raw), BATCH):
        reply = client.post(f"{url}v1/predict", json={"instances": x_raw[start:start + BATCH].tolist()})
        reply.raise_for_status()
        preds = reply.json()["predictions"]
        correct += sum(p["label"] == int(t) for p, t in zip(preds, y[start:start + BATCH]))
        escalated += sum(p.get("answered_by") == "teacher" or "escalation" in p for p in preds)
        failed += sum("escalation" in p for p in preds)
    latencies = []
    for i in range(latency_requests):
        began = time.perf_counter()
        client.post(f"{url}v1/predict", json={"instances": x_raw[i % len(x_raw):][:1].tolist()}).raise_for_status()
        latencies.append(1000 * (time.perf_counter() - began))
    return {"accuracy": correct / len(y), "escalated": escalated / len(y), "failed": failed,
            "mean_ms": float(np.mean(latencies)), "p99_ms": float(np.percentile(latencies, 99))}


def recommend(rows: Sequence[Row], target: float) -> Row | None:
    """The cascade row with the least escalation whose accuracy reaches ``target`` (None if none does)."""
    ok = [r for r in rows if r.threshold is not None and r.accuracy >= target]
    return min(ok, key=lambda r: (r.escalated, r.mean_ms)) if ok else None


def run_cascade_report_cli(cfg: Config, args=None) -> Path:
    """``raydistill cascade-report``: check the inputs, deploy, sweep, write the report; returns its folder."""
    import ray

    from raydistill.serving.app import build_app
    from raydistill.serving.deploy import serve_args
    from raydistill.runtime import init_ray

    thresholds = sorted(set(getattr(args, "thresholds", None) or THRESHOLDS))
    if any(t < 0 or not np.isfinite(t) for t in thresholds):
        raise ConfigError(f"--thresholds: must be finite numbers >= 0, got {thresholds}")
    latency_requests = getattr(args, "latency_requests", 200)
    if latency_requests < 1:
        raise ConfigError(f"--latency-requests: must be >= 1, got {latency_requests}")
    target = getattr(args, "target_accuracy", None)
    if target is not None and not 0 <= target <= 1:  # NaN fails this too
        raise ConfigError(f"--target-accuracy: an accuracy in [0, 1] (0.968, not 96.8), got {target}")
    student_ref = getattr(args, "artifact", "") or cfg.serve.artifact
    teacher_ref = cfg.serve.cascade_teacher or "latest:teacher"
    cascade = serve_args(cfg, student_ref).model_copy(update={
        "cascade_teacher": teacher_ref, "cascade_min_replicas": max(1, cfg.serve.cascade_min_replicas),
        "canary_artifact": ""})
    teacher_alone = serve_args(cfg, teacher_ref).model_copy(update={"cascade_teacher": "", "canary_artifact": ""})
    split = getattr(args, "split", "test")
    examples = split_examples(load_data(cfg.data, cfg.run.seed), split)
    build_app(cascade)  # verifies both artifacts and the pair before anything starts
    started_ray = not ray.is_initialized()
    init_ray(cfg.run.address, quiet=cfg.run.quiet)
    try:
        rows = sweep(cfg, cascade, teacher_alone, thresholds, examples, latency_requests)
    finally:
        if started_ray:
            ray.shutdown()
    target = rows[0].accuracy - 0.002 if target is None else target
    return write_report(rows, target, cfg.storage_dir() / "cascade" / stamped_name("cascade"),
                        metric=cfg.serve.cascade_metric, split=split)


def split_examples(bundle, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x_raw (N, C, H, W), y (N,))`` of ``split`` (``test``, or ``val`` to choose a threshold
    without looking at the test split), as raw pixels: what a client sends."""
    if split not in ("test", "val"):
        raise ConfigError(f"--split: must be test or val, got {split!r}")
    x, y = (bundle.x_val, bundle.y_val) if split == "val" else (bundle.x_test, bundle.y_test)
    if len(y) == 0:
        raise ConfigError(f"--split {split}: the {split} split is empty"
                          + (" (data.val_fraction is 0; set it, e.g. --set data.val_fraction=0.1)" if split == "val" else ""))
    return raw_pixels(x, bundle.normalization), y


def sweep(cfg: Config, cascade, teacher_alone, thresholds: Sequence[float], test: tuple[np.ndarray, np.ndarray],
          latency_requests: int) -> list[Row]:
    """The teacher alone, then the cascade at each threshold, over HTTP through Serve on ``serve.host:port``
    (both apps removed afterwards)."""
    import httpx
    from ray import serve

    from raydistill.serving.app import build_app
    from raydistill.serving.deploy import proxy_url

    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s},
                logging_config={"enable_access_log": False, "log_level": "WARNING"})
    base = proxy_url(s.host, s.port, "/")
    rows: list[Row] = []
    try:
        with httpx.Client(timeout=max(30.0, s.request_timeout_s), headers=_auth_header(cfg)) as client:
            serve.run(build_app(teacher_alone), name=TEACHER_APP, route_prefix=f"/{TEACHER_APP}")
            rows.append(Row(name="teacher alone", threshold=None, **measure(
                client, f"{base}{TEACHER_APP}/", *test, latency_requests=latency_requests)))
            serve.delete(TEACHER_APP)
            for t in thresholds:
                serve.run(build_app(cascade.model_copy(update={"cascade_threshold": t})), name=CASCADE_APP,
                          route_prefix=f"/{CASCADE_APP}")
                _wait_for_threshold(client, f"{base}{CASCADE_APP}/", t)
                result = measure(client, f"{base}{CASCADE_APP}/", *test, latency_requests=latency_requests)
                rows.append(Row(name="student alone" if t == 0 else f"cascade {s.cascade_metric} < {t:g}",
                                threshold=t, **result))
                logger.info(f"cascade-report: threshold {t:g}: accuracy {result['accuracy']:.4f}, "
                            f"escalated {result['escalated']:.3f}, mean {result['mean_ms']:.1f} ms")
    finally:
        for app in (CASCADE_APP, TEACHER_APP):
            serve.delete(app)
    return rows


def _auth_header(cfg: Config) -> dict:
    """``Authorization`` for our own requests when the endpoint needs a token (read as the replicas do)."""
    from raydistill.serving.service import read_auth_token

    token = read_auth_token(cfg.serve.auth_token_env, cfg.serve.auth_token_file)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _wait_for_threshold(client, url: str, threshold: float, timeout_s: float = 60.0) -> None:
    """Until every replica's ``/healthz`` reports ``threshold`` (``user_config`` reaches replicas asynchronously)."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        reply = client.get(f"{url}healthz")
        ok = reply.status_code == 200 and reply.json().get("cascade", {}).get("cascade_threshold") == threshold
        seen = seen + 1 if ok else 0
        if seen >= 5:  # a few in a row: requests are spread over replicas
            return
        time.sleep(0.05 if ok else 0.2)
    raise RuntimeError(f"cascade-report: the replicas did not take threshold {threshold} within {timeout_s:.0f} s")


def write_report(rows: Sequence[Row], target: float, out: Path, *, metric: str, split: str = "test") -> Path:
    """``report.csv``, ``report.md`` and ``report.png`` in ``out``; logs the table and the recommendation."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    best = recommend(rows, target)
    teacher = rows[0]
    lines = [f"| model | threshold | {split} acc | escalated | failed | mean latency (ms) | p99 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.name} | {'' if r.threshold is None else f'{r.threshold:g}'} | {r.accuracy:.4f} | "
              f"{r.escalated:.1%} | {r.failed} | {r.mean_ms:.2f} | {r.p99_ms:.2f} |" for r in rows]
    if best is None:
        verdict = f"No threshold reaches the target accuracy {target:.4f}: the cascade does not pay here."
    else:
        verdict = (f"Threshold {best.threshold:g} ({metric}) reaches {best.accuracy:.4f} (target {target:.4f}) escalating "
                   f"{best.escalated:.1%} of inputs, at {best.mean_ms / teacher.mean_ms:.2f}x the teacher alone's mean "
                   f"latency ({best.mean_ms:.2f} vs {teacher.mean_ms:.2f} ms).")
    (out / "report.md").write_text("\n".join(lines) + "\n\n" + verdict + "\n")
    _plot(rows, out / "report.png", metric=metric, split=split)
    logger.info("\n".join(lines) + "\n" + verdict + f"\nreport: {out}")
    return out


def _plot(rows: Sequence[Row], path: Path, *, metric: str, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cascade = [r for r in rows if r.threshold is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([100 * r.escalated for r in cascade], [r.accuracy for r in cascade], "o-", label=f"cascade ({metric})")
    for r in cascade:
        ax.annotate(f"{r.threshold:g}", (100 * r.escalated, r.accuracy), textcoords="offset points", xytext=(4, -10))
    ax.axhline(rows[0].accuracy, color="gray", linestyle="--", label="teacher alone")
    ax.set_xlabel("instances escalated to the teacher (%)")
    ax.set_ylabel(f"{split} accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
