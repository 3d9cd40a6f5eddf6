"""Fast tests of the serving pieces that need no Ray runtime: request validation, the model runner
(normalization, softmax, top-k, INT8) and the shared HTTP service on the bare FastAPI app."""
from __future__ import annotations

import asyncio
import json
import os
import shutil

import httpx
import numpy as np
import pytest
import torch

from conftest import REPO
from _serve_helpers import normalized_by_hand
from raydistill.core.artifacts import ArtifactError, load_artifact, load_card, mark_chosen

from raydistill.serving.validation import (InputSpec, RequestError, check_content_type, check_declared_length,
                                           instances_to_array, parse_json_body, parse_predict_request)

DIGITS = InputSpec((1, 8, 8), 10, max_instances=4)


def body(payload) -> bytes:
    return json.dumps(payload).encode()


def digit(value: float = 1.0, shape=(8, 8)) -> list:
    return np.full(shape, value).tolist()


def error_of(fn, *args, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args, **kwargs)
    return info.value


# --- validation (pure) -------------------------------------------------------------------------


def test_valid_request_becomes_nchw_float32_in_either_accepted_shape():
    raw = body({"instances": [digit(1.0), [digit(2.0)]], "top_k": 3})

    parsed = parse_predict_request(raw, DIGITS)

    assert parsed.x.shape == (2, 1, 8, 8) and parsed.x.dtype == np.float32
    assert parsed.x[0, 0, 0, 0] == 1.0 and parsed.x[1, 0, 7, 7] == 2.0
    assert parsed.top_k == 3


@pytest.mark.parametrize("raw, status, fragment", [
    (b"", 400, "empty"),
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b"[" * 5000 + b"]" * 5000, 400, "nested too deeply"),
    (b"[1, 2]", 422, "JSON object"),
    (body({}), 422, "missing field 'instances'"),
    (body({"instances": [digit()], "extra": 1}), 422, "unknown field(s) 'extra'"),
    (body({"instances": "abc"}), 422, "must be a list"),
    (body({"instances": []}), 422, "is empty"),
    (body({"instances": [digit()] * 5}), 413, "too many instances: 5 > max_instances=4"),
    (body({"instances": [digit(shape=(8, 7))]}), 422, "expected shape [1, 8, 8] or [8, 8], got [8, 7]"),
    (body({"instances": [digit(shape=(3, 8, 8))]}), 422, "got [3, 8, 8]"),
    (body({"instances": [1.0]}), 422, "got []"),
    (body({"instances": [digit()[:7] + [[1.0] * 7]]}), 422, "instances[0][7]: expected a list of length 8"),
    (body({"instances": [digit(), [[1.0] * 8] * 7 + [[1.0] * 7]]}), 422, "instances[1][7]"),
    (b'{"instances": [[[NaN, 1, 1, 1, 1, 1, 1, 1]]]}', 422, "non-finite number NaN"),
    (b'{"instances": [[[Infinity]]]}', 422, "non-finite number Infinity"),
    (body({"instances": [digit(1e39)]}), 422, "instances[0] holds a value that is not a finite float32"),
    (body({"instances": [[["x"] + [1] * 7] + [[1] * 8] * 7]}), 422, 'instances[0][0][0]: expected a number, got "x"'),
    (body({"instances": [[[None] * 8] * 8]}), 422, "expected a number, got null"),
    (body({"instances": [[[1] * 7 + [True]] + [[1] * 8] * 7]}), 422, "instances[0][0][7]: expected a number, got true"),
    (body({"instances": [[[10**400] * 8] * 8]}), 422, "is not a finite float32"),
    (body({"instances": [digit()], "top_k": 11}), 422, "top_k must be an integer in 1..10, got 11"),
    (body({"instances": [digit()], "top_k": True}), 422, "got true"),
])
def test_each_malformed_body_gets_its_4xx_and_says_what_is_wrong(raw, status, fragment):
    err = error_of(parse_predict_request, raw, DIGITS)

    assert err.status == status
    assert fragment in err.message, err.message


def test_instances_of_mixed_forms_are_each_reshaped():
    x = instances_to_array([digit(1.0), [digit(2.0)]], DIGITS, strict=True)

    assert x.shape == (2, 1, 8, 8) and x[1].max() == 2.0


def test_multichannel_models_need_the_channel_axis():
    spec = InputSpec((3, 4, 4), 5)

    ok = instances_to_array([np.ones((3, 4, 4)).tolist()], spec)
    err = error_of(instances_to_array, [np.ones((4, 4)).tolist()], spec)

    assert ok.shape == (1, 3, 4, 4)
    assert err.status == 422 and "expected shape [3, 4, 4], got [4, 4]" in err.message


@pytest.mark.parametrize("header, status", [(None, 415), ("text/plain", 415), ("application/jsonx", 415)])
def test_content_type_must_be_json(header, status):
    assert error_of(check_content_type, header).status == status


def test_content_type_with_charset_is_accepted():
    check_content_type("Application/JSON; charset=utf-8")


@pytest.mark.parametrize("header, status", [("2000", 413), ("abc", 400), ("-1", 400)])
def test_declared_length_is_checked_before_reading(header, status):
    err = error_of(check_declared_length, header, 1000)

    assert err.status == status
    assert ("max_body_bytes=1000" in err.message) == (status == 413)


def test_json_object_is_returned_as_is():
    assert parse_json_body(b' {"instances": [1]} ') == {"instances": [1]}


@pytest.mark.parametrize("body", [b'{"instances": [[[' + b"1" * 5000 + b']]]}', b'{"instances": [[1]], "top_k": '
                                  + b"9" * 4301 + b"}"])
def test_integers_beyond_pythons_digit_limit_are_a_400_not_a_500(body):
    err = error_of(parse_json_body, body)

    assert err.status == 400 and "not usable JSON" in err.message and len(err.message) < 200


# --- model runner and the bare HTTP app (no Ray) ------------------------------------------------


@pytest.fixture(scope="module")
def raw_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:32].astype(np.float32), digits.target[:32]


def test_runner_matches_the_models_own_forward_pass(local_student, raw_digits):
    from raydistill.serving.model_runner import ModelRunner

    runner = ModelRunner.from_artifact(str(local_student))
    model, card = load_artifact(local_student)
    x = raw_digits[0][:, None]  # (32, 1, 8, 8) raw pixels 0..16

    probs = runner.predict_proba(x)
    expected = torch.softmax(model(torch.from_numpy(normalized_by_hand(x, card["normalization"]))), 1).detach().numpy()

    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert runner.model_info() == {"name": card["name"], "version": local_student.name,
                                   "sha256": card["weights_sha256"], "quantize": "none"}


def test_top_k_lists_the_most_likely_classes_in_order(local_student, raw_digits):
    from raydistill.serving.model_runner import ModelRunner

    runner = ModelRunner.from_artifact(str(local_student))
    probs = runner.predict_proba(raw_digits[0][:4, None])

    preds = runner.format_predictions(probs, top_k=3)

    for pred, row in zip(preds, probs):
        assert pred["label"] == int(row.argmax()) == pred["top_k"][0]["label"]
        assert [t["probability"] for t in pred["top_k"]] == sorted(row.tolist(), reverse=True)[:3]
        assert pred["class_name"] == str(pred["label"])


def test_int8_runner_records_quantization_and_mostly_agrees(local_student, raw_digits):
    from raydistill.serving.model_runner import ModelRunner

    fp32 = ModelRunner.from_artifact(str(local_student))
    int8 = ModelRunner.from_artifact(str(local_student), quantize="int8")
    x = raw_digits[0][:, None]

    agree = (fp32.predict_proba(x).argmax(1) == int8.predict_proba(x).argmax(1)).mean()

    assert int8.served_card()["serving"]["quantize"] == "int8"
    assert int8.served_card()["serving"]["quantized_modules"]  # names of the Linear layers
    assert "quantized.dynamic" in type(int8.model[1]).__module__
    assert agree >= 0.9


def test_artifact_from_a_file_uri_is_fetched_and_verified(local_student):
    from raydistill.serving.model_runner import ModelRunner

    runner = ModelRunner.from_artifact(local_student.resolve().as_uri())

    assert runner.card["weights_sha256"] == load_card(local_student)["weights_sha256"]
    assert runner.version == local_student.name


def test_tampered_artifact_refuses_to_build_an_app(local_student, tmp_path):
    from raydistill.serving.app import ServeArgs, build_app

    bad = tmp_path / "tampered"
    shutil.copytree(local_student, bad)
    data = bytearray((bad / "weights.pt").read_bytes())
    data[-20] ^= 0xFF
    (bad / "weights.pt").write_bytes(bytes(data))

    with pytest.raises(ArtifactError, match="refusing to deploy .*sha256 mismatch"):
        build_app(ServeArgs(artifact=str(bad)))


def test_config_yaml_app_builder_builds_the_chosen_student(local_student, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raydistill.serving.app import app_builder

    mark_chosen(local_student, tmp_path)
    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve" / "config.yaml").read_text()))
    args = {**config.applications[0].args, "storage_path": str(tmp_path)}

    app = app_builder(args)

    assert config.applications[0].import_path == "serve.app:app_builder"
    assert config.http_options.host == "127.0.0.1"
    assert type(app).__name__ == "Application"


def test_bad_app_args_name_the_field():
    from pydantic import ValidationError

    from raydistill.serving.app import app_builder

    with pytest.raises(ValidationError, match="max_batch_siz"):
        app_builder({"max_batch_siz": 4})


@pytest.mark.parametrize("field, value, message", [
    # found by review: serve/config.yaml's args took .inf where the serve: config section refuses it
    ("body_timeout_s", float("inf"), "finite number"),  # would turn the slow-client 408 off
    ("batch_wait_timeout_s", float("nan"), "finite number"),
    ("num_cpus", float("inf"), "finite number"),
    ("upscale_delay_s", float("inf"), "finite number"),
    ("allowed_hosts", ["127.0.0.1", " "], "must be host names"),
])
def test_serve_args_refuse_what_the_serve_section_refuses(field, value, message):
    from pydantic import ValidationError

    from raydistill.serving.app import ServeArgs
    from raydistill.serving.deployment import ReplicaSettings

    with pytest.raises(ValidationError, match=f"(?s){field}.*{message}"):
        ServeArgs.model_validate({field: value})
    if field in ReplicaSettings.model_fields:  # the run-time user_config too
        with pytest.raises(ValidationError, match=message):
            ReplicaSettings.model_validate({field: value})


@pytest.mark.parametrize("seconds", [2.0, 10.0])
def test_a_look_back_window_within_serves_metrics_interval_is_refused_by_config_and_by_serve_args(seconds):
    # Ray Serve's replicas push autoscaling metrics every DEFAULT_METRICS_INTERVAL_S; a window no longer
    # than that averages one sample at most and Serve only warns (FutureWarning) that it will refuse it
    from pydantic import ValidationError
    from ray.serve.config import DEFAULT_METRICS_INTERVAL_S

    from raydistill.core.config import ConfigError, load_config
    from raydistill.core.config.schema import SERVE_METRICS_INTERVAL_S
    from raydistill.serving.app import ServeArgs

    assert SERVE_METRICS_INTERVAL_S == DEFAULT_METRICS_INTERVAL_S == 10.0 and seconds <= DEFAULT_METRICS_INTERVAL_S
    with pytest.raises(ConfigError, match=rf"serve\.look_back_period_s: must be > 10 seconds.*got {seconds}"):
        load_config(None, [f"serve.look_back_period_s={seconds}"])
    with pytest.raises(ValidationError, match="look_back_period_s"):
        ServeArgs.model_validate({"look_back_period_s": seconds})
    assert load_config(None, ["serve.look_back_period_s=10.5"]).serve.look_back_period_s == 10.5
    assert ServeArgs.model_validate({"look_back_period_s": 10.5}).look_back_period_s == 10.5


def test_auth_token_env_set_but_missing_refuses_to_start(local_student, monkeypatch):
    from raydistill.core.config import ConfigError
    from raydistill.serving.service import PredictionService

    monkeypatch.delenv("RAYDISTILL_NO_SUCH_TOKEN", raising=False)

    with pytest.raises(ConfigError, match="RAYDISTILL_NO_SUCH_TOKEN"):
        PredictionService.from_settings({"artifact": str(local_student), "max_instances": 4,
                                         "max_body_bytes": 1000, "auth_token_env": "RAYDISTILL_NO_SUCH_TOKEN"})


@pytest.mark.parametrize("mode, content, message", [(0o644, "s3cret\n", "mode 644, readable by others; run: chmod 600"),
                                                    (0o600, " \n", "is empty"), (None, "", "cannot be read")])
def test_a_token_file_that_others_can_read_or_that_is_empty_or_missing_refuses_to_start(
        local_student, tmp_path, mode, content, message):
    from raydistill.core.config import ConfigError
    from raydistill.serving.service import PredictionService

    token_file = tmp_path / "token"
    if mode is not None:
        token_file.write_text(content)
        token_file.chmod(mode)
    with pytest.raises(ConfigError, match=f"serve.auth_token_file: {token_file}.*{message}"):
        PredictionService.from_settings({"artifact": str(local_student), "max_instances": 4, "max_body_bytes": 1000,
                                         "auth_token_file": str(token_file)})


def test_a_0600_token_file_turns_bearer_auth_on(local_student, raw_digits, tmp_path):
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    token_file = tmp_path / "token"
    token_file.write_text("f1le-t0ken\n")
    token_file.chmod(0o600)
    app = build_bare_app(ServeArgs(artifact=str(local_student), auth_token_file=str(token_file)).model_dump())
    payload = {"instances": raw_digits[0][:1].tolist()}

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as client:
            return [await client.post("/v1/predict", json=payload, headers={"authorization": "Bearer f1le-t0ken"}),
                    await client.post("/v1/predict", json=payload)]

    ok, missing = asyncio.run(calls())
    assert ok.status_code == 200 and missing.status_code == 401


def test_the_token_never_travels_in_the_deployment_options(monkeypatch):
    from raydistill.serving.app import ServeArgs, deployment_options

    monkeypatch.setenv("RAYDISTILL_UNIT_TOKEN", "s3cret-in-env")
    options = deployment_options(ServeArgs(auth_token_env="RAYDISTILL_UNIT_TOKEN"))
    assert "s3cret-in-env" not in repr(options) and "runtime_env" not in options["ray_actor_options"]


def test_bare_app_answers_and_refuses_like_the_served_one(local_student, raw_digits, monkeypatch):
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    monkeypatch.setenv("RAYDISTILL_UNIT_TOKEN", "s3cret")
    app = build_bare_app(ServeArgs(artifact=str(local_student), auth_token_env="RAYDISTILL_UNIT_TOKEN",
                                   max_body_bytes=5000).model_dump())
    good = {"authorization": "Bearer s3cret"}
    payload = {"instances": raw_digits[0][:2].tolist()}

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as client:
            return [await client.post("/v1/predict", json=payload, headers=good),
                    await client.post("/v1/predict", json=payload),
                    await client.post("/v1/predict", json=payload, headers={"authorization": "Bearer nope"}),
                    await client.post("/v1/predict", content=b"x" * 6000, headers=good),
                    await client.get("/healthz")]

    ok, missing, wrong, big, health = asyncio.run(calls())

    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer" and "missing bearer token" in missing.json()["detail"]
    assert big.status_code == 413 and health.status_code == 200


def test_an_input_that_overflows_the_model_is_a_422_naming_it_not_a_500(local_student, raw_digits):
    # Found by review: finite float32 pixels near float32's maximum pass validation, overflow the
    # activations, and the NaN probabilities made JSONResponse raise (a 500).
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    model, card = load_artifact(local_student)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))  # (32, 64)
    strongest = first.weight.detach().abs().sum(1).argmax()  # the unit an input can push the hardest
    huge = (np.sign(first.weight[strongest].detach().numpy()) * 3e38).reshape(8, 8).astype(np.float32)
    by_hand = model(torch.from_numpy(normalized_by_hand(huge[None, None], card["normalization"])))
    assert not torch.isfinite(torch.softmax(by_hand, 1)).all()  # the premise: this input overflows the model
    app = build_bare_app(ServeArgs(artifact=str(local_student)).model_dump())
    payload = {"instances": [raw_digits[0][0].tolist(), huge.tolist()]}

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
            return (await client.post("/v1/predict", json=payload),
                    await client.post("/v1/predict", json={"instances": payload["instances"][:1]}),
                    await client.get("/healthz"))

    overflow, fine, health = asyncio.run(calls())

    assert overflow.status_code == 422, overflow.text
    assert overflow.json()["detail"].startswith("instances[1]: the model's answer for this input is not finite")
    assert "3e+38" in overflow.json()["detail"]
    assert fine.status_code == 200 and health.status_code == 200  # the replica stays healthy


@pytest.mark.parametrize("host, status", [("127.0.0.1:8000", 200), ("LOCALHOST", 200), ("[::1]:8000", 200),
                                          ("evil.example", 400), ("evil.example:8000", 400), ("127.0.0.1.evil", 400),
                                          ("", 400)])
def test_host_header_outside_the_allow_list_is_refused(local_student, host, status):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example.
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    app = build_bare_app(ServeArgs(artifact=str(local_student)).model_dump())

    async def get(path):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, headers={"host": host})

    card = asyncio.run(get("/v1/model"))
    assert card.status_code == status
    if status == 400:
        assert "serve.allowed_hosts" in card.json()["detail"] and "weights_sha256" not in card.text


def test_host_allow_list_star_answers_any_host(local_student):
    from raydistill.serving.service import PredictionService

    service = PredictionService.from_settings({"artifact": str(local_student), "max_instances": 4,
                                               "max_body_bytes": 1000, "allowed_hosts": ["*"]})
    service.check_host("anything.example:1")  # no RequestError


def test_ingress_flags_are_set_only_for_haproxy_and_unknown_kinds_name_the_key(monkeypatch):
    from raydistill.serving.ingress import INGRESS_FLAGS, active_ingress, enable_ingress

    for name in INGRESS_FLAGS["haproxy"]:
        monkeypatch.setenv(name, "")  # recorded first, so teardown removes what enable_ingress sets below
        monkeypatch.delenv(name)
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")  # the user's own value
    assert enable_ingress("proxy") == {} and active_ingress() == "proxy"
    assert "RAY_SERVE_ENABLE_DIRECT_INGRESS" not in os.environ
    assert enable_ingress("haproxy")["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert active_ingress() == "haproxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "30"  # kept, not overwritten
    assert active_ingress({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}) == "proxy"  # needs both flags
    with pytest.raises(ValueError, match="serve.ingress: must be one of"):
        enable_ingress("nginx")


def test_served_card_is_strict_json_even_when_an_old_card_holds_nan(local_student, tmp_path):
    # Cards written before NaN was refused (e.g. a failed federated round's loss): GET /v1/model must
    # still be valid JSON, so the non-finite numbers go out as null.
    import json
    import shutil

    from raydistill.serving.model_runner import ModelRunner

    art = shutil.copytree(local_student, tmp_path / "student-old")
    card = json.loads((art / "model.json").read_text())
    card["metrics"]["history"] = [{"train_loss": float("nan"), "val_accuracy": 0.9}]
    (art / "model.json").write_text(json.dumps(card))  # json.dumps writes the NaN token
    served = ModelRunner.from_artifact(str(art)).served_card()
    text = json.dumps(served, allow_nan=False)  # raises if any NaN/inf is left
    assert json.loads(text)["metrics"]["history"] == [{"train_loss": None, "val_accuracy": 0.9}]


@pytest.mark.parametrize("host, expect_added", [("10.1.2.3", True), ("127.0.0.1", False), ("0.0.0.0", False)])
def test_raydistill_serve_always_answers_the_name_it_binds(host, expect_added):
    from raydistill.core.config import load_config
    from raydistill.serving.deploy import serve_args

    args = serve_args(load_config("configs/digits.yaml", [f"serve.host={host}", "serve.auth_token_env=RAYDISTILL_TOKEN"]))

    defaults = ["127.0.0.1", "localhost", "[::1]"]
    assert args.allowed_hosts == (defaults + [host] if expect_added else defaults)


@pytest.mark.parametrize("raw, shown", [
    ("/home/ann/runs/artifacts/student/student-1", "student-1"),
    ("s3://AKIAKEY:s3cret@bucket/models/student-1/", "student-1"),
    ("s3://AKIAKEY:s3cret@bucket", "s3://..."),
    ("C:\\Users\\ann\\runs\\student-2", "student-2"),
    ("digits-student-mlp", "digits-student-mlp"),
])
def test_paths_and_uris_are_cut_to_their_last_part(raw, shown):
    from raydistill.serving.model_runner import redact_paths

    assert redact_paths({"a": [{"path": raw}]}) == {"a": [{"path": shown}]}


def test_served_card_holds_no_absolute_path(local_student):
    import json

    from raydistill.serving.model_runner import ModelRunner

    text = json.dumps(ModelRunner.from_artifact(str(local_student)).served_card())
    assert str(local_student.parent) not in text and '"/' not in text
    assert local_student.name in text  # the version is still named


def _asgi_post(app, chunks_then_hang: list[bytes], *, disconnect: bool = False) -> tuple[int, dict]:
    """POST /v1/predict straight through ASGI: send ``chunks`` (more_body=True), then either hang
    (a trickling client that never finishes) or disconnect. Returns (status, JSON body)."""
    import json

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}
    pending = list(chunks_then_hang)
    never = asyncio.Event()

    async def receive():
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        if disconnect:
            return {"type": "http.disconnect"}
        await never.wait()  # the client stalls: no more bytes, no end of body

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)


def test_a_body_that_never_finishes_gets_408_and_a_disconnect_a_quiet_400(local_student):
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    app = build_bare_app(ServeArgs(artifact=str(local_student), body_timeout_s=0.2).model_dump())

    status, body = _asgi_post(app, [b'{"instances": [[['])
    assert status == 408 and "body_timeout_s=0.2" in body["detail"]
    status, body = _asgi_post(app, [b'{"instances": '], disconnect=True)
    assert status == 400 and "disconnected" in body["detail"]


def test_a_model_that_answers_nan_is_unhealthy_and_refuses_predictions(local_student, tmp_path, raw_digits):
    # Finite weights (so the artifact saves and loads) whose activations overflow float32: every
    # output would be NaN. /healthz must say so (503) and /v1/predict must answer 503, not 500s.
    from raydistill.core.artifacts import save_artifact
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    model, card = load_artifact(local_student)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    biases = [k for k in state if k.endswith("bias")]
    weights = [k for k in state if k.endswith("weight")]
    state[biases[0]].fill_(3e38)  # finite, and so is every weight...
    state[weights[1]].fill_(1.0)  # ...but the next layer sums 32 x 3e38 = inf, and softmax(inf) = NaN
    broken = save_artifact(tmp_path / "student-overflow", state, card)
    app = build_bare_app(ServeArgs(artifact=str(broken)).model_dump())

    async def calls():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return (await client.get("/healthz"),
                    await client.post("/v1/predict", json={"instances": raw_digits[0][:1].tolist()}))

    health, predict = asyncio.run(calls())
    assert health.status_code == 503 and predict.status_code == 503
    assert "NaN or infinite" in predict.json()["detail"]
    # the untouched student is healthy (the probe is not simply failing)
    ok = build_bare_app(ServeArgs(artifact=str(local_student)).model_dump())
    async def ok_health():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=ok), base_url="http://127.0.0.1") as c:
            return await c.get("/healthz")
    assert asyncio.run(ok_health()).status_code == 200


# --- artifacts named by a URI (serving/fetch.py) -------------------------------------------------


def test_a_uri_artifact_is_fetched_once_into_the_storage_cache_keyed_by_its_sha256(local_student, tmp_path):
    import json

    from raydistill.serving.model_runner import locate_artifact

    # Execute: the same file:// URI twice.
    uri = f"file://{local_student}"
    first = locate_artifact(uri, str(tmp_path))
    stamp = (first / "weights.pt").stat().st_mtime_ns
    second = locate_artifact(uri, str(tmp_path))
    # Assert: cached under <storage>/fetched/<the card's weights sha256>, reused without a new copy,
    # nothing partial left.
    sha = json.loads((local_student / "model.json").read_text())["weights_sha256"]
    assert first == second == tmp_path / "fetched" / sha
    assert (second / "weights.pt").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "fetched").iterdir()] == [sha]


def test_the_least_recently_used_fetch_is_evicted_past_the_cap(local_student, local_teacher, tmp_path):
    from raydistill.serving.fetch import fetch_artifact

    def size(path):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    cap = size(local_teacher) + size(local_student) // 2  # room for the teacher alone, not both
    student = fetch_artifact(f"file://{local_student}", tmp_path, max_bytes=cap)
    teacher = fetch_artifact(f"file://{local_teacher}", tmp_path, max_bytes=cap)
    assert teacher.is_dir() and not student.exists()


def test_a_uri_artifact_over_the_cap_or_tampered_is_refused_and_leaves_nothing(local_student, tmp_path):
    import shutil

    from raydistill.core.artifacts import ArtifactError
    from raydistill.serving.fetch import fetch_artifact

    with pytest.raises(ArtifactError, match=r"cannot fetch artifact file://.* MB, more than the 0\.001 MB fetch cap"):
        fetch_artifact(f"file://{local_student}", tmp_path / "cache", max_bytes=1000)
    tampered = shutil.copytree(local_student, tmp_path / "tampered")
    weights = bytearray((tampered / "weights.pt").read_bytes())
    weights[-16] ^= 0x01
    (tampered / "weights.pt").write_bytes(bytes(weights))
    with pytest.raises(ArtifactError, match="cannot fetch artifact file://.*sha256 mismatch"):
        fetch_artifact(f"file://{tampered}", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []


# --- the OpenAPI input schema (issue 14 #10) ------------------------------------------------------


def _schema_accepts(schema: dict, payload) -> bool:
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(payload)


@pytest.mark.parametrize("payload, accepted", [
    ({"instances": [digit()]}, True),  # (H, W)
    ({"instances": [[digit()]]}, True),  # (1, H, W)
    ({"instances": [digit(), [digit(2.0)]], "top_k": 3}, True),  # mixed forms, top_k
    ({"instances": [digit(3.4e38)], "top_k": None}, True),  # float32 range, explicit null
    ({"instances": [digit(1e39)]}, False),  # beyond float32 range
    ({"instances": [digit(3.4028235e38)]}, False),  # just above float32's maximum (a cast would round it down)
    ({"instances": [digit()], "top_k": 3.0}, True),  # JSON Schema: a number with no fraction is an integer
    ({"instances": [digit()], "top_k": 2.5}, False),
    ({"instances": []}, False),
    ({"instances": [digit()] * 5}, False),  # max_instances = 4
    ({"instances": [digit(shape=(8, 7))]}, False),
    ({"instances": [digit(shape=(2, 8, 8))]}, False),  # one channel only
    ({"instances": [[[True] * 8] * 8]}, False),  # booleans are not numbers
    ({"instances": [[["1"] * 8] * 8]}, False),
    ({"instances": [digit()], "top_k": 11}, False),  # K = 10
    ({"instances": [digit()], "top_k": 0}, False),
    ({"instances": [digit()], "extra": 1}, False),
    ({"top_k": 1}, False),
])
def test_the_openapi_body_schema_accepts_exactly_what_the_server_accepts(payload, accepted):
    from raydistill.serving.openapi import predict_body_schema

    schema = predict_body_schema(DIGITS)
    assert _schema_accepts(schema, payload) is accepted
    try:  # the validator that really answers requests agrees with the hand-written verdict
        parse_predict_request(body(payload), DIGITS)
        served = True
    except RequestError as exc:
        assert 400 <= exc.status < 500
        served = False
    assert served is accepted


def test_the_schema_of_a_three_channel_model_nests_three_deep_with_its_lengths():
    from raydistill.serving.openapi import predict_body_schema

    items = predict_body_schema(InputSpec((3, 4, 5), 7, max_instances=2))["properties"]["instances"]["items"]
    lengths, level = [], items
    while level.get("type") == "array":
        lengths.append((level["minItems"], level["maxItems"]))
        level = level["items"]
    assert lengths == [(3, 3), (4, 4), (5, 5)] and level["type"] == "number"


def test_the_bare_apps_openapi_describes_the_served_models_input(local_student):
    from raydistill.serving.app import ServeArgs
    from raydistill.serving.bare import build_bare_app

    app = build_bare_app(ServeArgs(artifact=str(local_student), max_instances=3).model_dump())

    async def fetch():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001") as client:
            return (await client.get("/openapi.json")).json()

    document = asyncio.run(fetch())
    schema = document["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    card = load_card(local_student)
    assert schema["properties"]["instances"]["maxItems"] == 3
    assert schema["properties"]["top_k"]["anyOf"][0]["maximum"] == len(card["class_names"])
    assert _schema_accepts(schema, {"instances": [np.zeros(card["input_shape"]).tolist()]})
    assert not _schema_accepts(schema, {"instances": [np.zeros((1, 2, 2)).tolist()]})
