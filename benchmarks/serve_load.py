"""Ray Serve vs bare FastAPI+uvicorn, same student, same code, same machine, same run.

    flock /tmp/raydistill-ray.lock .venv/bin/python benchmarks/serve_load.py [--quick]

Two students: the digits MLP (tiny: HTTP overhead dominates) and ResNet-18 on 3x32x32 inputs
(compute-bound: ~7 ms per image alone, ~2.3 ms per image in a batch of 16, one thread). For
each: Serve with batching (1 and 2 replicas), Serve without batching, Serve with INT8 dynamic
quantization, a no-op Serve deployment (reads the body, returns a constant: Serve's own floor
on this machine), and the bare FastAPI app (``raydistill.serving.bare``: identical validation/
model/response code, one uvicorn process, no batching, one torch thread) — each driven by the same bounded closed-loop client (a lean asyncio
HTTP/1.1 keep-alive client, so the client costs little CPU) at concurrency 1, 8 and 32, on
127.0.0.1. Prints a table, our handler's own per-request cost (where the time does *not* go),
INT8 vs fp32 accuracy on the digits test set, and one JSON line.

``--cascade`` measures only the confidence cascade instead: the digits MLP student alone, the student
with an MLP 512-512 teacher behind it at the threshold ``raydistill cascade-report`` would recommend
(least escalation within 0.2 pt of the teacher, computed in process), and the teacher alone; the
client cycles through the test split's first 200 instances, one per request.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from raydistill.core.artifacts import new_artifact_path, save_artifact
from raydistill.core.cards import build_card
from raydistill.core.config import DataSection
from raydistill.core.data import load_data
from raydistill.core.engine import evaluate, fit
from raydistill.core.models import build_model

HOST = "127.0.0.1"
STUDENTS = {  # name: (data section, model name, model args, epochs)
    "digits-mlp": (DataSection(), "mlp", {"hidden": [32]}, 20),
    "cifar-resnet18": (DataSection(name="synthetic", synthetic_shape=[3, 32, 32], synthetic_classes=10,
                                   synthetic_samples=300), "resnet18", {"stem": "imagenet"}, 1),  # as the README's table was measured
}
TEACHERS = {"digits-teacher": (DataSection(), "mlp", {"hidden": [512, 512]}, 30)}  # --cascade: behind digits-mlp


# --- students ------------------------------------------------------------------------------------


def train_student(folder: Path, name: str) -> tuple[Path, object]:
    """Train one student in-process (seconds) and save it as a real artifact; returns (path, bundle)."""
    section, model_name, args, epochs = {**STUDENTS, **TEACHERS}[name]
    bundle = load_data(section, 0)
    torch.manual_seed(0)
    model = build_model(model_name, bundle.input_shape, bundle.num_classes, args)
    fit(model, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-2, batch_size=64, seed=0)
    metrics = {"test_accuracy": evaluate(model, bundle.x_test, bundle.y_test)["accuracy"]}
    card = build_card(kind="student", model_name=model_name, model_args=args, bundle=bundle, seed=0, metrics=metrics)
    return save_artifact(new_artifact_path(folder, "student"), model, card), bundle


def raw_test_pixels(bundle) -> np.ndarray:
    """Undo the normalization: raw pixels ``(N, C, H, W)``, what a client would send."""
    mean = np.asarray(bundle.normalization["mean"], np.float32)[None, :, None, None]
    std = np.asarray(bundle.normalization["std"], np.float32)[None, :, None, None]
    return bundle.x_test * std + mean


def int8_accuracy(path: Path, bundle) -> dict:
    """fp32 vs INT8 runner on the test split (the exact code the replicas run)."""
    from raydistill.serving.model_runner import ModelRunner

    x = raw_test_pixels(bundle)
    fp32, int8 = (ModelRunner.from_artifact(str(path), quantize=q).predict_proba(x).argmax(1) for q in ("none", "int8"))
    return {"fp32_accuracy": float((fp32 == bundle.y_test).mean()), "int8_accuracy": float((int8 == bundle.y_test).mean()),
            "agreement": float((fp32 == int8).mean()), "test_examples": int(len(x))}


def handler_cost_ms(path: Path, body: bytes, repeats: int = 300) -> dict:
    """Our per-request work outside HTTP: validate + forward + format + JSON encode (one instance)."""
    from raydistill.serving.model_runner import ModelRunner
    from raydistill.serving.validation import parse_predict_request

    torch.set_num_threads(1)
    runner = ModelRunner.from_artifact(str(path))
    spec = runner.input_spec(256)
    stages = {"validate": 0.0, "forward": 0.0, "respond": 0.0}
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = parse_predict_request(body, spec).x
        t1 = time.perf_counter()
        probs = runner.predict_proba(x)
        t2 = time.perf_counter()
        json.dumps({"predictions": runner.format_predictions(probs), "model": runner.model_info()})
        t3 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[key] += dt
    return {k: round(1e3 * v / repeats, 3) for k, v in stages.items()}


# --- a lean closed-loop HTTP/1.1 client ------------------------------------------------------------


async def _one_request(reader, writer, request: bytes) -> int:
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if not chunked:
        await reader.readexactly(length)
        return status
    while (size := int((await reader.readline()).strip(), 16)) > 0:
        await reader.readexactly(size + 2)
    await reader.readline()
    return status


async def _drive(port: int, path: str, body: bytes | list[bytes], concurrency: int, max_requests: int,
                 max_seconds: float) -> dict:
    """Closed loop: ``concurrency`` keep-alive connections, each sending the next of ``body`` (one body,
    or a list taken in turn) as soon as its previous answer is in."""
    bodies = body if isinstance(body, list) else [body]
    requests = [(f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    latencies: list[float] = []
    errors = [0]
    left = [max_requests]
    deadline = time.perf_counter() + max_seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while left[0] > 0 and time.perf_counter() < deadline:
                left[0] -= 1
                request = requests[left[0] % len(requests)]
                t0 = time.perf_counter()
                try:
                    ok = await asyncio.wait_for(_one_request(reader, writer, request), 30) == 200
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                latencies.append(time.perf_counter() - t0) if ok else errors.__setitem__(0, errors[0] + 1)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.sort(np.asarray(latencies)) * 1e3
    return {"requests": len(latencies) + errors[0], "errors": errors[0], "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None}


def measure(port: int, path: str, body: bytes, concurrencies, max_requests: int, max_seconds: float) -> dict:
    asyncio.run(_drive(port, path, body, 4, 40, 10))  # warm-up: connections, first batches
    return {c: asyncio.run(_drive(port, path, body, c, max_requests, max_seconds)) for c in concurrencies}


# --- servers -------------------------------------------------------------------------------------


def wait_healthy(port: int, probe: str = "/healthz", timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{HOST}:{port}{probe}", timeout=2).status_code in (200, 405):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not become healthy")


def bare_server(path: Path, port: int) -> subprocess.Popen:
    """uvicorn + the bare app in one subprocess with one torch thread, like a replica (two OpenMP
    threads on two shared cores collapsed under contention: 4 req/s for ResNet-18, measured)."""
    settings = {"artifact": str(path), "max_instances": 256, "max_body_bytes": 1_000_000, "quantize": "none"}
    code = f"from raydistill.serving.bare import run_bare; run_bare({settings!r}, port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_healthy(port)
    return proc


def serve_variants() -> dict[str, dict]:
    """Serve app variants: name -> ServeArgs overrides (min = max replicas: no autoscaling mid-run)."""
    return {"serve batch 1r": {"max_batch_size": 16}, "serve nobatch 1r": {"max_batch_size": 1},
            "serve batch 2r": {"max_batch_size": 16, "min_replicas": 2, "max_replicas": 2},
            "serve int8 1r": {"max_batch_size": 16, "quantize": "int8"}}


def run_serve_variant(path: Path, port: int, overrides: dict, measure_args) -> dict:
    from ray import serve

    from raydistill.serving.app import ServeArgs, build_app

    base = {"artifact": str(path), "min_replicas": 1, "max_replicas": 1, "batch_wait_timeout_s": 0.002,
            "max_ongoing_requests": 64}
    serve.run(build_app(ServeArgs(**{**base, **overrides})), name="bench", route_prefix="/")
    wait_healthy(port)
    try:
        return measure(port, "/v1/predict", *measure_args)
    finally:
        serve.delete("bench")


def noop_app():
    """Serve's floor: the same route and body, no validation, no model, a constant answer."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                      logging_config={"enable_access_log": False})
    class NoOp:
        async def __call__(self, request: Request) -> JSONResponse:
            await request.body()
            return JSONResponse({"predictions": [{"label": 0}], "model": {}})

    return NoOp.bind()


def run_noop(port: int, measure_args) -> dict:
    from ray import serve

    serve.run(noop_app(), name="bench", route_prefix="/")
    wait_healthy(port, probe="/v1/predict")
    try:
        return measure(port, "/v1/predict", *measure_args)
    finally:
        serve.delete("bench")


# --- main ----------------------------------------------------------------------------------------


def bench_student(name: str, folder: Path, serve_port: int, bare_port: int, args) -> tuple[list[dict], dict]:
    path, bundle = train_student(folder, name)
    # 3 decimals, like pixel values a client would send (not 17-digit float reprs)
    body = json.dumps({"instances": np.round(raw_test_pixels(bundle)[:1].astype(np.float64), 3).tolist()}).encode()
    measure_args = (body, args.concurrency, args.requests, args.seconds)
    rows = _rows(name, "serve no-op floor", run_noop(serve_port, measure_args))
    for variant, overrides in serve_variants().items():
        rows += _rows(name, variant, run_serve_variant(path, serve_port, overrides, measure_args))
    proc = bare_server(path, bare_port)
    try:
        rows += _rows(name, "bare fastapi", measure(bare_port, "/v1/predict", *measure_args))
    finally:
        proc.terminate()
        proc.wait(10)
    extra = {"handler_ms": handler_cost_ms(path, body), "body_bytes": len(body)}
    if name == "digits-mlp":
        extra["int8"] = int8_accuracy(path, bundle)
    return rows, extra


def cascade_threshold(student: Path, teacher: Path, bundle, candidates=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)) -> dict:
    """The cascade-report's recommendation, computed in process on the test split with the replicas'
    own code (ModelRunner): the least-escalating ``max_prob`` threshold within 0.2 pt of the teacher."""
    from raydistill.serving.model_runner import ModelRunner

    x = raw_test_pixels(bundle)
    p_s, p_t = (ModelRunner.from_artifact(str(p)).predict_proba(x) for p in (student, teacher))
    teacher_acc = float((p_t.argmax(1) == bundle.y_test).mean())
    options = []
    for t in candidates:
        unsure = p_s.max(1) < t
        acc = float((np.where(unsure, p_t.argmax(1), p_s.argmax(1)) == bundle.y_test).mean())
        options.append({"threshold": t, "accuracy": acc, "escalated": float(unsure.mean())})
    reaching = [o for o in options if o["accuracy"] >= teacher_acc - 0.002] or [max(options, key=lambda o: o["accuracy"])]
    return {**min(reaching, key=lambda o: o["escalated"]), "teacher_accuracy": teacher_acc,
            "student_accuracy": float((p_s.argmax(1) == bundle.y_test).mean())}


def bench_cascade(folder: Path, serve_port: int, args) -> tuple[list[dict], dict]:
    """Student only, the cascade at the recommended threshold, teacher only: digits, the test split's
    first 200 instances in turn, one per request (so escalations happen at the test split's rate)."""
    student, bundle = train_student(folder, "digits-mlp")
    teacher, _ = train_student(folder, "digits-teacher")
    pick = cascade_threshold(student, teacher, bundle)
    raw = raw_test_pixels(bundle)[:200]
    bodies = [json.dumps({"instances": np.round(raw[i:i + 1].astype(np.float64), 3).tolist()}).encode()
              for i in range(len(raw))]
    measure_args = (bodies, args.concurrency, args.requests, args.seconds)
    cascade = {"max_batch_size": 16, "cascade_teacher": str(teacher), "cascade_threshold": pick["threshold"],
               "cascade_min_replicas": 1, "cascade_max_replicas": 1}
    rows = _rows("digits", "student only", run_serve_variant(student, serve_port, {"max_batch_size": 16}, measure_args))
    rows += _rows("digits", f"cascade <{pick['threshold']:g}", run_serve_variant(student, serve_port, cascade, measure_args))
    rows += _rows("digits", "teacher only", run_serve_variant(teacher, serve_port, {"max_batch_size": 16}, measure_args))
    return rows, pick


def _rows(student: str, variant: str, results: dict) -> list[dict]:
    return [{"student": student, "server": variant, "concurrency": c, **r} for c, r in results.items()]


def format_table(rows: list[dict]) -> str:
    bare = {(r["student"], r["concurrency"]): r["rps"] for r in rows if r["server"] == "bare fastapi"}
    head = f"{'student':<20}{'server':<18}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs bare':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        base = bare.get((r["student"], r["concurrency"]))
        ratio = f"{r['rps'] / base:>8.2f}x" if base else f"{'-':>9}"
        lines.append(f"{r['student']:<20}{r['server']:<18}{r['concurrency']:>5}{r['rps']:>9.1f}{r['p50_ms']:>9.2f}"
                     f"{r['p99_ms']:>9.2f}{r['errors']:>8}{ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per cell (smoke run)")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                        help="Serve's HTTP proxy actor (default) or HAProxy in front of replicas that "
                             "serve HTTP themselves (Ray's direct-ingress mode; see README, Serve)")
    parser.add_argument("--cascade", action="store_true",
                        help="only the cascade rows: digits student only / cascade at the recommended threshold / teacher only")
    args = parser.parse_args()
    args.concurrency = (1, 8, 32)
    args.requests, args.seconds = (100, 2.0) if args.quick else (4000, 4.0)
    from ray import serve

    from raydistill.runtime import free_local_port, init_ray
    from raydistill.serving.ingress import enable_ingress

    enable_ingress(args.ingress)  # environment flags: before the local Ray starts
    init_ray("", num_cpus=2)
    serve_port, bare_port = free_local_port(HOST), free_local_port(HOST)
    serve.start(http_options={"host": HOST, "port": serve_port}, logging_config={"enable_access_log": False})
    rows, extras = [], {}
    try:
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as folder:
            if args.cascade:
                rows, extras["cascade"] = bench_cascade(Path(folder), serve_port, args)
            for name in [] if args.cascade else args.students:
                student_rows, extras[name] = bench_student(name, Path(folder), serve_port, bare_port, args)
                rows += student_rows
    finally:
        serve.shutdown()
    print(format_table(rows))
    if "cascade" in extras:
        print(f"cascade threshold (max_prob, in process on the digits test split): {extras['cascade']}")
    for name, extra in extras.items():
        print(f"{name}: our handler per request (ms, 1 instance, {extra['body_bytes']} B body): {extra['handler_ms']}")
    if "int8" in extras.get("digits-mlp", {}):  # INT8 touches only Linear layers: ResNet-18 has one
        print(f"digits INT8 vs fp32: {extras['digits-mlp']['int8']}")
    print(json.dumps({"benchmark": "serve_load", "rows": rows, "extras": extras}))


if __name__ == "__main__":
    main()
