"""Ray Serve tests over real HTTP on 127.0.0.1: one Serve instance for the module (torn down at the
end), the local digits student deployed once, then redeployed/reconfigured by the tests in order.

Every load loop is bounded in requests and seconds (:func:`run_load`).
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from _serve_helpers import (DEPLOYMENT, LoadResult, answers_200, normalized_by_hand, replica_actors, run_load,
                            wait_until)
from conftest import REPO, free_port, make_local_artifact
from raydistill.core.artifacts import ArtifactError, load_artifact, load_card
from raydistill.core.config import load_config

APP = "student"
pytestmark = pytest.mark.ray


# --- helpers --------------------------------------------------------------------------------------


def raw_digits(n: int = 16) -> np.ndarray:
    """The first ``n`` scikit-learn digits as raw pixels ``(n, 1, 8, 8)``, values 0..16."""
    from sklearn.datasets import load_digits

    return load_digits().images[:n, None].astype(np.float32)


def serve_args(artifact, **overrides):
    from raydistill.serving.app import ServeArgs

    base = dict(artifact=str(artifact), max_instances=64, max_body_bytes=50_000, min_replicas=1, max_replicas=2,
                upscale_delay_s=30, downscale_delay_s=600)
    return ServeArgs(**{**base, **overrides})


def run_app(args, name: str = APP, route_prefix: str = "/") -> None:
    from ray import serve

    from raydistill.serving.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)


def deployment_status(name: str = APP):
    from ray import serve

    return serve.status().applications[name].deployments[DEPLOYMENT]


def running_replicas(name: str = APP) -> int:
    states = deployment_status(name).replica_states
    return int(states.get("RUNNING", 0)) if sum(states.values()) == states.get("RUNNING", 0) else -1


def post(url: str, path: str = "v1/predict", **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", timeout=10.0, **kwargs)


# --- the module's Serve instance ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ray_session, local_student):
    """Serve on a free loopback port with the local student as app ``student`` at ``/``."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    run_app(serve_args(local_student))
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", port=port, artifact=local_student)
    serve.shutdown()


@pytest.mark.timeout(60)
def test_predictions_equal_the_models_own_forward_pass(served):
    x = raw_digits(16)
    model, card = load_artifact(served.artifact)
    expected = torch.softmax(model(torch.from_numpy(normalized_by_hand(x, card["normalization"]))), 1).detach().numpy()

    full = post(served.url, json={"instances": x.tolist(), "top_k": 3})
    squeezed = post(served.url, json={"instances": x[:, 0].tolist()})  # (H, W) form of 1-channel inputs

    assert full.status_code == 200 and squeezed.status_code == 200
    for response in (full, squeezed):
        preds = response.json()["predictions"]
        probs = np.array([p["probabilities"] for p in preds])
        np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
        assert [p["label"] for p in preds] == expected.argmax(1).tolist()
        assert [p["class_name"] for p in preds] == [card["class_names"][k] for k in expected.argmax(1)]
    assert [t["label"] for t in full.json()["predictions"][0]["top_k"]] == np.argsort(-expected[0])[:3].tolist()
    assert full.json()["model"] == {"name": card["name"], "version": served.artifact.name,
                                    "sha256": card["weights_sha256"], "quantize": "none"}


def _chunks(data: bytes, size: int = 8192):
    for i in range(0, len(data), size):
        yield data[i:i + size]


JSON = {"content-type": "application/json"}
ONE = np.ones((8, 8)).tolist()
BAD_INPUTS = [
    ("non-JSON", dict(content=b"{nope", headers=JSON), 400, "not valid JSON"),
    ("wrong content type", dict(content=b'{"instances": []}', headers={"content-type": "text/plain"}), 415,
     "Content-Type must be application/json"),
    ("no content type", dict(content=b'{"instances": []}'), 415, "Content-Type"),
    ("missing instances", dict(json={"inputs": [ONE]}), 422, "unknown field(s) 'inputs'"),
    ("missing instances only", dict(json={"top_k": 1}), 422, "missing field 'instances'"),
    ("empty list", dict(json={"instances": []}), 422, "'instances' is empty"),
    ("wrong shape", dict(json={"instances": [np.ones((28, 28)).tolist()]}), 422,
     "expected shape [1, 8, 8] or [8, 8], got [28, 28]"),
    ("ragged", dict(json={"instances": [ONE[:7] + [[1.0] * 3]]}), 422, "instances[0][7]: expected a list of length 8"),
    ("non-numeric", dict(json={"instances": [[["a"] * 8] * 8]}), 422, "expected a number"),
    ("NaN", dict(content=b'{"instances": [[[NaN]]]}', headers=JSON), 422, "non-finite number NaN"),
    ("inf", dict(content=b'{"instances": [[[-Infinity]]]}', headers=JSON), 422, "non-finite number -Infinity"),
    ("float32 overflow", dict(json={"instances": [np.full((8, 8), 1e300).tolist()]}), 422, "not a finite float32"),
    ("too many instances", dict(json={"instances": [ONE] * 65}), 413, "too many instances: 65 > max_instances=64"),
    ("body over limit", dict(content=b" " * 60_000, headers=JSON), 413, "max_body_bytes=50000"),
    ("chunked body over limit", dict(content=_chunks(b" " * 60_000), headers=JSON), 413, "max_body_bytes=50000"),
    ("just above float32 max", dict(json={"instances": [np.full((8, 8), 3.4028235e38).tolist()]}), 422,
     "not a finite float32"),  # a float32 cast would round it down to the maximum (schemathesis found it)
    ("bad top_k", dict(json={"instances": [ONE], "top_k": 0}), 422, "top_k must be an integer in 1..10"),
    ("fractional top_k", dict(json={"instances": [ONE], "top_k": 2.5}), 422, "got 2.5"),
]


@pytest.mark.timeout(60)
def test_every_bad_input_gets_its_4xx_and_the_replica_stays_healthy(served):
    answers = {name: post(served.url, **kwargs) for name, kwargs, _, _ in BAD_INPUTS}
    after = post(served.url, json={"instances": [ONE]})
    health = httpx.get(f"{served.url}healthz")

    for name, _, status, fragment in BAD_INPUTS:
        assert answers[name].status_code == status, (name, answers[name].text)
        assert fragment in answers[name].json()["detail"], (name, answers[name].text)
    assert after.status_code == 200 and health.status_code == 200
    assert running_replicas() == 1


@pytest.mark.timeout(60)
def test_model_endpoint_serves_the_artifacts_card_and_docs_describe_the_api(served):
    card = httpx.get(f"{served.url}v1/model").json()
    openapi = httpx.get(f"{served.url}openapi.json").json()
    docs = httpx.get(f"{served.url}docs")

    serving = card.pop("serving")

    def last_part(value):  # the on-disk card with each absolute path cut to its name, by hand
        if isinstance(value, dict):
            return {k: last_part(v) for k, v in value.items()}
        if isinstance(value, list):
            return [last_part(v) for v in value]
        return Path(value).name if isinstance(value, str) and value.startswith("/") else value

    assert card == last_part(load_card(served.artifact))  # the full card stays on disk; no paths go out
    assert serving["quantize"] == "none" and serving["path"] == served.artifact.name
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    predict = openapi["paths"]["/v1/predict"]["post"]
    assert "instances" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"200", "400", "401", "413", "415", "422"} <= set(predict["responses"])
    assert {"/v1/model", "/healthz"} <= set(openapi["paths"])


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, tmp_path):
    # Prepare: a second app whose limits fit the body size a schema cannot state (4 instances of 8x8
    # numbers stay far below max_body_bytes), so every schema-valid request must be answered 200.
    import subprocess
    import sys

    run_app(serve_args(served.artifact, max_instances=4), name="fuzz", route_prefix="/fuzz")
    base = f"{served.url}fuzz"
    assert wait_until(lambda: answers_200(f"{base}/healthz"), timeout_s=60)
    # Execute: schemathesis over the live app's own /openapi.json, every check, bounded in cases and time
    # (its fuzzing phase runs until --max-time: ~1,000 cases in 30 s here, ~2,000 in 60 s found nothing more).
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run([str(cli), "--config-file", str(Path(__file__).with_name("schemathesis.toml")),
                          "run", f"{base}/openapi.json", "--url", base, "--checks", "all",
                          "--max-examples", "25", "--max-time", "30", "--seed", "1", "--workers", "1",
                          "--report", "junit", "--report-dir", str(tmp_path), "--no-color"],
                         capture_output=True, text=True, timeout=200, cwd=tmp_path)
    # Assert: no failure of any check (5xx, response not matching its schema, schema-valid body refused,
    # schema-invalid body accepted), and every operation was really exercised (schemathesis' own report).
    import xml.etree.ElementTree as ET

    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    (report,) = tmp_path.glob("junit-*.xml")
    suite = ET.parse(report).getroot()
    assert {c.get("name") for c in suite.iter("testcase")} == {"POST /v1/predict", "GET /v1/model", "GET /healthz"}
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    from ray import serve

    serve.delete("fuzz")


@pytest.mark.timeout(90)
def test_bearer_auth_from_a_token_file_and_the_token_is_nowhere_in_serves_state(served, tmp_path):
    import json

    from ray import serve
    from ray.serve.context import _get_global_client

    # Prepare: the token in a 0600 file the replicas read where they run (nothing secret in the config).
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    token_file.chmod(0o600)
    run_app(serve_args(served.artifact, auth_token_file=str(token_file), max_replicas=1),
            name="secure", route_prefix="/secure")
    # What Ray shows about the running apps (the dashboard's Serve API returns the same details),
    # including each deployment's ray_actor_options, where a runtime_env with the token used to be
    details = _get_global_client().get_serve_details()
    options = details["applications"]["secure"]["deployments"]["StudentDeployment"]["deployment_config"]
    details = json.dumps(details, default=str)
    secure = f"http://127.0.0.1:{served.port}/secure/"
    body = {"instances": [ONE]}
    try:
        missing = post(secure, json=body)
        wrong = post(secure, json=body, headers={"Authorization": "Bearer tok-124"})
        right = post(secure, json=body, headers={"Authorization": "Bearer tok-123"})
        card_without = httpx.get(f"{secure}v1/model")
        card_with = httpx.get(f"{secure}v1/model", headers={"Authorization": "Bearer tok-123"})
        health = httpx.get(f"{secure}healthz")
        open_app = post(served.url, json=body)
    finally:
        serve.delete("secure")

    assert missing.status_code == wrong.status_code == card_without.status_code == 401
    assert "missing bearer token" in missing.json()["detail"] and wrong.json()["detail"] == "invalid bearer token"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == card_with.status_code == health.status_code == 200
    assert open_app.status_code == 200  # auth is per application: the main one has none
    assert "ray_actor_options" in options and "tok-123" not in details


@pytest.mark.timeout(60)
def test_tampered_artifact_refuses_to_deploy_and_the_app_keeps_serving(served, tmp_path):
    from raydistill.serving.deploy import deploy

    bad = tmp_path / "tampered"
    shutil.copytree(served.artifact, bad)
    weights = bytearray((bad / "weights.pt").read_bytes())
    weights[-16] ^= 0x01
    (bad / "weights.pt").write_bytes(bytes(weights))
    cfg = load_config(None, [f"serve.port={served.port}", f"serve.app_name={APP}"])

    with pytest.raises(ArtifactError, match="refusing to deploy .*sha256 mismatch"):
        deploy(cfg, str(bad))

    assert post(served.url, json={"instances": [ONE]}).json()["model"]["version"] == served.artifact.name


def declared_config(artifact, user_config: dict):
    """``serve/config.yaml`` itself, as app ``declared`` at ``/declared`` serving ``artifact``."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    app = raw["applications"][0]
    app.update(name="declared", route_prefix="/declared")
    app["args"].update(artifact=str(artifact))
    app["deployments"][0]["user_config"] = user_config
    return ServeDeploySchema.model_validate(raw)


def deploy_declared(config) -> None:
    """What ``serve deploy`` / ``serve run config.yaml`` do: hand the config to the controller."""
    from ray.serve.context import _get_global_client

    _get_global_client().deploy_apps(config, _blocking=True)


@pytest.mark.timeout(120)
def test_config_yaml_deploys_and_batching_changes_at_run_time_without_restart(served):
    from ray import serve

    url = f"http://127.0.0.1:{served.port}/declared/"
    try:
        deploy_declared(declared_config(served.artifact, {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}))
        before = {a.actor_id for a in replica_actors("declared")}
        on = httpx.get(f"{url}healthz").json()["batching"]
        deploy_declared(declared_config(served.artifact, {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}))
        assert wait_until(lambda: httpx.get(f"{url}healthz").json()["batching"]["max_batch_size"] == 1, 20)
        answer = post(url, json={"instances": [ONE, ONE]})
        after = {a.actor_id for a in replica_actors("declared")}
    finally:
        serve.delete("declared")

    assert on == {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
    assert len(before) == 1 and after == before  # reconfigure(), not a restart


@pytest.mark.timeout(240)
def test_autoscaling_goes_from_one_to_two_replicas_under_load_and_back(served):
    # 4 clients, each request held ~0.1 s in the batch queue: ~4 ongoing requests against a target
    # of 1 per replica, at ~40 req/s. Serve's proxy pushes its metrics every 10 s (default), so
    # the decision comes within ~10 s and the new replica needs ~4 s more to start.
    run_app(serve_args(served.artifact, min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                       upscale_delay_s=0.5, downscale_delay_s=1.0, look_back_period_s=12.0,
                       max_batch_size=16, batch_wait_timeout_s=0.1))
    assert wait_until(lambda: running_replicas() == 1, timeout_s=30)
    stop = threading.Event()
    loader = {}
    thread = threading.Thread(target=lambda: loader.update(result=run_load(
        served.url, {"instances": [ONE]}, threads=4, max_requests=3000, max_seconds=60, stop=stop)))
    thread.start()

    scaled_up = wait_until(lambda: running_replicas() >= 2, timeout_s=60)  # an event, with a generous hard cap
    stop.set()
    thread.join(30)
    scaled_down = wait_until(lambda: running_replicas() == 1, timeout_s=40)

    print(f"autoscaling: {loader['result'].total} requests, {loader['result'].failed} failed")
    assert scaled_up, deployment_status()
    assert loader["result"].failed == 0, loader["result"].errors[:5]
    assert 100 <= loader["result"].total <= 3000
    assert scaled_down, deployment_status()


@pytest.mark.timeout(150)
def test_a_killed_replica_is_replaced_with_few_failures_during_and_none_after(served):
    import ray

    run_app(serve_args(served.artifact, min_replicas=2, max_replicas=2))
    assert wait_until(lambda: running_replicas() == 2, timeout_s=40), deployment_status()
    victim = replica_actors(APP)[0]
    stop, during = threading.Event(), LoadResult()
    thread = threading.Thread(target=run_load, args=(served.url, {"instances": [ONE]}), kwargs=dict(
        threads=4, max_requests=3000, max_seconds=45, stop=stop, result=during))
    thread.start()
    assert wait_until(lambda: during.total >= 50, timeout_s=30)  # under load before the kill

    ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    replaced = wait_until(lambda: running_replicas() == 2 and victim.actor_id not in
                          {a.actor_id for a in replica_actors(APP)}, timeout_s=40)
    wait_until(lambda: during.total >= 800, timeout_s=20)  # at most 4 in flight when killed: < 0.5%
    stop.set()
    thread.join(30)
    after = run_load(served.url, {"instances": [ONE]}, threads=4, max_requests=200, max_seconds=20)

    print(f"replica kill: {during.failed}/{during.total} failed during ({during.errors[:4]}), "
          f"{after.failed}/{after.total} after")
    assert replaced, deployment_status()
    assert during.total >= 200 and during.failed / during.total < 0.01, (during.failed, during.total, during.errors[:5])
    assert after.total == 200 and after.failed == 0, after.errors[:5]


def _metric_total(text: str, name: str, **tags: str) -> float:
    """Sum of the Prometheus samples ``name{...}`` whose labels include ``tags`` (Ray's text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _scrape_metrics() -> str:
    """The local node's Prometheus export (Ray's metrics export port), or "" while it is not up."""
    import ray

    port = ray.nodes()[0]["MetricsExportPort"]
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


@pytest.mark.timeout(180)
def test_cascade_answers_unsure_instances_with_the_teacher_and_the_student_when_the_teacher_is_gone(
        served, local_teacher):
    import ray
    from ray import serve

    x = raw_digits(32)
    by_hand = {}
    for name, path in (("student", served.artifact), ("teacher", local_teacher)):
        model, card = load_artifact(path)
        logits = model(torch.from_numpy(normalized_by_hand(x, card["normalization"])))
        by_hand[name] = torch.softmax(logits, 1).detach().numpy()  # (32, 10)
    confidence = by_hand["student"].max(1)
    threshold = float(np.median(confidence))  # about half the instances go to the teacher
    unsure = confidence < threshold
    assert 0 < unsure.sum() < len(x)
    run_app(serve_args(served.artifact, cascade_teacher=str(local_teacher), cascade_threshold=threshold,
                       cascade_timeout_s=1.0, cascade_min_replicas=0, cascade_max_replicas=1),
            name="cascade", route_prefix="/cascade")
    url = f"{served.url}cascade/"
    body = {"instances": x.tolist()}
    try:
        # the teacher starts at zero replicas: the first escalation cannot get an answer within 1 s,
        # so the student answers everything, the unsure instances marked, and nothing is a 5xx
        first = post(url, json=body)
        assert first.status_code == 200, first.text
        preds = first.json()["predictions"]
        assert [p.get("escalation") for p in preds] == ["failed" if u else None for u in unsure]
        assert {p["answered_by"] for p in preds} == {"student"}
        np.testing.assert_allclose([p["probabilities"] for p in preds], by_hand["student"], rtol=1e-4, atol=1e-6)

        # once it has scaled up, the teacher answers exactly the unsure instances, with its own forward pass
        assert wait_until(lambda: post(url, json=body).json()["predictions"][int(np.argmax(unsure))].get(
            "answered_by") == "teacher", timeout_s=90)
        preds = post(url, json=body).json()["predictions"]
        assert [p["answered_by"] for p in preds] == ["teacher" if u else "student" for u in unsure]
        assert all("escalation" not in p for p in preds)
        expected = np.where(unsure[:, None], by_hand["teacher"], by_hand["student"])
        np.testing.assert_allclose([p["probabilities"] for p in preds], expected, rtol=1e-4, atol=1e-6)

        # the teacher's replica killed: the student's answers come back, marked, still 200
        (victim,) = replica_actors("cascade", "TeacherDeployment")
        ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
        after = post(url, json=body)
        assert after.status_code == 200, after.text
        assert [p.get("escalation") for p in after.json()["predictions"]] == ["failed" if u else None for u in unsure]

        # Prometheus metrics through Ray's export, per version and answering model. Ray reports each
        # series every few seconds and not all at once, so wait for every count together
        version = {"version": served.artifact.name, "application": "cascade"}
        n_unsure = int(unsure.sum())
        wanted = {("ray_raydistill_escalation_failures_total", ()): 2 * n_unsure,
                  ("ray_raydistill_predictions_total", (("answered_by", "teacher"),)): n_unsure,
                  ("ray_raydistill_predictions_total", (("answered_by", "student"),)): 3 * len(x) - 3 * n_unsure,
                  ("ray_raydistill_requests_total", (("code", "200"),)): 4,
                  ("ray_raydistill_batch_size_count", ()): 4}

        def short_of_wanted() -> dict:
            text = _scrape_metrics()
            totals = {key: _metric_total(text, key[0], **dict(key[1]), **version) for key in wanted}
            return {key: total for key, total in totals.items() if total < wanted[key]}

        assert wait_until(lambda: not short_of_wanted(), timeout_s=60), short_of_wanted()
    finally:
        serve.delete("cascade")


@pytest.mark.timeout(180)
def test_cascade_report_measures_each_threshold_over_http_as_the_models_predict_by_hand(served, local_teacher, tmp_path):
    import csv

    from raydistill.cli.commands import main
    from raydistill.core.data import load_data
    from raydistill.core.engine import predict_logits

    storage = tmp_path / "runs"
    code = main(["cascade-report", "--config", str(REPO / "configs" / "digits.yaml"), "--artifact", str(served.artifact),
                 "--set", f"serve.cascade_teacher={local_teacher}", "--set", f"run.storage_path={storage}",
                 "--set", f"serve.port={served.port}", "--thresholds", "0", "0.9", "1.01", "--latency-requests", "5"])
    assert code == 0
    (report,) = (storage / "cascade").iterdir()
    rows = list(csv.DictReader(open(report / "report.csv")))
    # by hand: the test split's raw pixels (x * std + mean), normalized with each model's card, its forward pass
    bundle = load_data(load_config(REPO / "configs" / "digits.yaml").data, 0)
    norm = bundle.normalization
    raw = bundle.x_test * np.array(norm["std"])[None, :, None, None] + np.array(norm["mean"])[None, :, None, None]
    probs = {}
    for name, path in (("student", served.artifact), ("teacher", local_teacher)):
        model, card = load_artifact(path)
        logits = predict_logits(model, normalized_by_hand(raw, card["normalization"]))
        probs[name] = torch.softmax(torch.from_numpy(logits), 1).numpy()
    y = bundle.y_test
    assert [r["name"] for r in rows] == ["teacher alone", "student alone", "cascade max_prob < 0.9",
                                         "cascade max_prob < 1.01"]
    assert float(rows[0]["accuracy"]) == pytest.approx(np.mean(probs["teacher"].argmax(1) == y), abs=1e-9)
    for row, t in zip(rows[1:], (0.0, 0.9, 1.01)):
        unsure = probs["student"].max(1) < t
        answer = np.where(unsure, probs["teacher"].argmax(1), probs["student"].argmax(1))
        assert float(row["escalated"]) == pytest.approx(unsure.mean(), abs=1e-9), t
        assert float(row["accuracy"]) == pytest.approx(np.mean(answer == y), abs=1e-9), t
        assert int(row["failed"]) == 0 and float(row["p99_ms"]) >= float(row["mean_ms"]) > 0
    assert float(rows[3]["escalated"]) == 1.0 and rows[3]["accuracy"] == rows[0]["accuracy"]
    assert (report / "report.png").stat().st_size > 0
    target = float(rows[0]["accuracy"]) - 0.002
    reaching = [r for r in rows[1:] if float(r["accuracy"]) >= target]
    best = min(reaching, key=lambda r: float(r["escalated"]))
    assert f"Threshold {float(best['threshold']):g} (max_prob) reaches" in (report / "report.md").read_text()


def _canary_bucket(key: str) -> float:
    """The split's formula, written out here: sha256's first 8 bytes, big-endian, over 2**64."""
    import hashlib

    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2**64


@pytest.mark.timeout(240)
def test_canary_takes_its_share_by_request_key_and_rollback_and_promote_fail_no_request(served, tmp_path_factory):
    from ray import serve

    from raydistill.cli.commands import main

    canary = make_local_artifact(tmp_path_factory.mktemp("canary"), epochs=2, seed=2)
    primary = served.artifact
    run_app(serve_args(primary, canary_artifact=str(canary), canary_fraction=0.3), name="canary", route_prefix="/canary")
    url = f"{served.url}canary/"
    body = {"instances": [ONE]}
    cli = ["--set", f"serve.artifact={primary}", "--set", f"serve.canary_artifact={canary}", "--set", "serve.app_name=canary",
           "--set", "serve.route_prefix=/canary", "--set", f"serve.port={served.port}", "--set", "serve.max_instances=64",
           "--set", "serve.max_body_bytes=50000", "--set", "run.quiet=true"]
    try:
        with httpx.Client(timeout=10) as client:
            def version(key: str) -> tuple[str, bool]:
                model = client.post(f"{url}v1/predict", json=body, headers={"X-Request-Key": key}).json()["model"]
                return model["version"], model["canary"]

            keys = [f"caller-{i}" for i in range(400)]  # one request each (sequential): 400 shows the split
            seen = {k: version(k) for k in keys}
        expected = {k for k in keys if _canary_bucket(k) < 0.3}
        assert {k for k, (_, is_canary) in seen.items() if is_canary} == expected
        assert {seen[k][0] for k in expected} == {canary.name} and {seen[k][0] for k in set(keys) - expected} == {primary.name}
        assert abs(len(expected) / len(keys) - 0.3) <= 0.05
        with httpx.Client(timeout=10) as client:  # sticky: a caller stays on its version
            assert all(client.post(f"{url}v1/predict", json=body, headers={"X-Request-Key": k}).json()["model"]["version"]
                       == seen[k][0] for k in keys[:100])

        for action, final in (("rollback", primary), ("promote", canary)):
            if action == "promote":  # the canary back, then promoted
                run_app(serve_args(primary, canary_artifact=str(canary), canary_fraction=0.3), name="canary",
                        route_prefix="/canary")
            stop, load = threading.Event(), LoadResult()
            thread = threading.Thread(target=run_load, args=(url, body), kwargs=dict(
                threads=2, max_requests=5000, max_seconds=90, stop=stop, result=load,
                read_timeout=30.0))  # a request held while new replicas start (~10 s on a loaded 2-core CI) is not dropped
            thread.start()
            assert wait_until(lambda: load.versions[canary.name] >= 5 and load.versions[primary.name] >= 5, timeout_s=30)
            assert main(["serve", action, *cli]) == 0
            done = wait_until(lambda: all("canary" not in post(url, json=body).json()["model"] and
                                          post(url, json=body).json()["model"]["version"] == final.name
                                          for _ in range(5)), timeout_s=60)
            stop.set()
            thread.join(30)
            assert done, action
            assert load.failed == 0, (action, load.errors[:5])
    finally:
        serve.delete("canary")


def test_a_cascade_teacher_for_other_classes_or_inputs_is_refused_naming_both(served, tmp_path):
    from raydistill.serving.app import build_app

    from raydistill.core.config import DataSection

    other = make_local_artifact(tmp_path, kind="teacher", model_args={"hidden": [8]}, epochs=1,
                                data=DataSection(name="synthetic", synthetic_classes=4))
    with pytest.raises(ArtifactError) as err:
        build_app(serve_args(served.artifact, cascade_teacher=str(other)))
    assert f"serve.cascade_teacher: teacher {other} has class list ['class_0', 'class_1', 'class_2', 'class_3']" in str(err.value)
    assert f"but student {served.artifact} has" in str(err.value)


@pytest.mark.timeout(90)
def test_cli_serves_int8_until_sigterm_then_removes_its_app(served):
    from ray import serve

    from raydistill.serving.deploy import run_serve_cli

    cfg = load_config(None, [f"serve.port={served.port}", "serve.app_name=cli", "serve.route_prefix=/cli",
                             "serve.quantize=int8", "serve.max_replicas=1", "run.quiet=true"])
    seen = {}

    def call_then_stop() -> None:
        url = f"http://127.0.0.1:{served.port}/cli/"
        if wait_until(lambda: answers_200(f"{url}healthz"), timeout_s=60):
            seen["card"] = httpx.get(f"{url}v1/model").json()
            seen["pred"] = post(url, json={"instances": raw_digits(8).tolist()}).json()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=call_then_stop, daemon=True).start()
    url = run_serve_cli(cfg, SimpleNamespace(artifact=str(served.artifact)))

    assert url == f"http://127.0.0.1:{served.port}/cli/"
    assert seen["card"]["serving"]["quantize"] == "int8" and seen["card"]["serving"]["quantized_modules"]
    assert seen["pred"]["model"]["quantize"] == "int8" and len(seen["pred"]["predictions"]) == 8
    assert "cli" not in serve.status().applications  # removed; Serve itself was ours, not the CLI's
    assert post(served.url, json={"instances": [ONE]}).status_code == 200
