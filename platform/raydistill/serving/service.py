"""The HTTP behaviour shared by the Ray Serve deployment and the bare FastAPI baseline. No Ray.

:class:`PredictionService` turns a Starlette ``Request`` into a JSON response: bearer auth
(constant-time compare), body size limits (``Content-Length`` and the bytes actually received),
content type, validation (:mod:`.validation`), then ``infer`` — a coroutine ``x (N, C, H, W) ->
probabilities (N, K)`` that the caller supplies (batched in Serve, direct in the baseline).
The pydantic models below only document the API in the generated OpenAPI (``/docs``).
"""
from __future__ import annotations

import asyncio
import hmac
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect
from pydantic import BaseModel, Field

from raydistill.core.config.rules import ConfigError
from raydistill.serving.model_runner import ModelRunner
from raydistill.serving.validation import (RequestError, body_too_large_message, check_content_type,
                         check_declared_length, parse_predict_request)

@dataclass
class Answer:
    """What an ``infer`` coroutine may return instead of bare probabilities ``(N, K)``: one note per
    instance merged into its prediction (a cascade's ``answered_by``), and the identity of the model
    that answered when it is not this replica's own (a canary)."""

    probs: np.ndarray
    notes: list[dict[str, Any]] | None = None
    model: dict[str, Any] | None = None


# x (N, C, H, W) -> probabilities (N, K), or an Answer
Infer = Callable[[np.ndarray], Awaitable[Any]]


def check_finite_answer(probs: np.ndarray, x: np.ndarray) -> None:
    """422 naming the first instance whose probabilities ``probs[i]`` (of ``(N, K)``) are not all
    finite. The served model answers finite numbers on a blank input (its probe, see ``/healthz``),
    so a non-finite answer comes from the input ``x[i]`` ``(C, H, W)``: finite float32 values so
    far outside the training data's range that the activations overflow. JSON cannot carry the
    answer, and it is the request's values, not the server, that are wrong."""
    finite = np.isfinite(probs).reshape(len(probs), -1).all(axis=1)  # (N,)
    if not finite.all():
        bad = int(np.argmin(finite))
        largest = float(np.abs(x[bad]).max())
        raise RequestError(422, f"instances[{bad}]: the model's answer for this input is not finite (its values "
                                f"reach |x| = {largest:.3g} and overflow the model); send raw pixels in the range "
                                f"the model was trained on")


# --- OpenAPI documentation --------------------------------------------------------------------


class PredictBody(BaseModel):
    """``POST /v1/predict`` body."""

    instances: list[Any] = Field(description="Raw pixel inputs, each a nested list in the model's input shape "
                                             "(C, H, W), e.g. 1x8x8 for digits; (H, W) is accepted when C == 1. "
                                             "The server normalizes them with the model card's mean/std.",
                                 examples=[[[[0, 0, 5, 13, 9, 1, 0, 0]] * 8]])
    top_k: int | None = Field(default=None, ge=1, description="Also return the k most likely classes.")


class TopClass(BaseModel):
    label: int
    class_name: str
    probability: float


class Prediction(BaseModel):
    label: int = Field(description="argmax class index")
    class_name: str
    probabilities: list[float] = Field(description="softmax over all classes, indexed by label")
    top_k: list[TopClass] | None = Field(default=None, description="present when top_k was sent")
    answered_by: Literal["student", "teacher"] | None = Field(
        default=None, description="with a cascade (serve.cascade_teacher): which model's answer this is")
    escalation: Literal["failed"] | None = Field(
        default=None, description="present when the instance was sent to the teacher, which did not answer "
                                  "in time: the answer is the student's")


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="artifact directory name (unique per training run)")
    sha256: str = Field(description="sha256 of the artifact's weights file")
    quantize: str = Field(description="none | int8")
    canary: bool | None = Field(default=None, description="with serve.canary_artifact: whether the canary answered")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: ModelInfo


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong with the request")


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


PREDICT_ROUTE: dict[str, Any] = {
    "summary": "Classify raw-pixel inputs",
    "response_model": PredictResponse,
    "responses": {401: _error("missing or wrong bearer token"),
                  400: _error("body is not JSON, or the Host header is not in serve.allowed_hosts"),
                  408: _error("body not fully received within body_timeout_s"),
                  503: _error("the model answers NaN/inf (see /healthz)"),
                  413: _error("body over max_body_bytes, or more than max_instances instances"),
                  415: _error("Content-Type is not application/json"),
                  422: _error("JSON of the wrong form: missing/empty instances, wrong shape, non-numeric, "
                              "NaN/inf, bad top_k; or values so large that the model's answer overflows")},
    "openapi_extra": {"requestBody": {"required": True, "content": {
        "application/json": {"schema": PredictBody.model_json_schema()}}}},
}
MODEL_ROUTE: dict[str, Any] = {"summary": "The served model card",
                               "responses": {400: _error("the Host header is not in serve.allowed_hosts"),
                                             401: _error("missing or wrong bearer token")}}
HEALTH_ROUTE: dict[str, Any] = {"summary": "Liveness: 200 when the model is loaded and answers finite numbers",
                                "responses": {503: _error("the model's probe forward pass was not finite")}}


# --- behaviour ----------------------------------------------------------------------------------


def read_auth_token(env_name: str, file_path: str = "") -> str | None:
    """The bearer token from the file ``file_path`` or the env var ``env_name`` (both ``""`` = auth
    off). A missing, empty or group/other-readable token refuses to start."""
    if file_path:
        return _token_from_file(file_path)
    if not env_name:
        return None
    token = os.environ.get(env_name, "")
    if not token:
        raise ConfigError(f"serve.auth_token_env: environment variable {env_name} is empty or unset where the "
                          "server runs; refusing to serve without the token")
    return token


def _token_from_file(file_path: str) -> str:
    """The stripped contents of ``file_path``, which must be a regular file only its owner can read."""
    import stat

    try:
        info = os.stat(file_path)
    except OSError as exc:
        raise ConfigError(f"serve.auth_token_file: {file_path} cannot be read where the server runs ({exc.strerror}); "
                          "refusing to serve without the token") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"serve.auth_token_file: {file_path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(f"serve.auth_token_file: {file_path} has mode {stat.S_IMODE(info.st_mode):o}, readable by "
                          f"others; run: chmod 600 {file_path}")
    with open(file_path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ConfigError(f"serve.auth_token_file: {file_path} is empty; refusing to serve without the token")
    return token


def host_name(header: str | None) -> str:
    """The host part of a ``Host`` header, lower-cased, without the port: ``"LocalHost:8000"`` ->
    ``"localhost"``, ``"[::1]:8000"`` -> ``"[::1]"``."""
    host = (header or "").strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


def error_response(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


class PredictionService:
    """Auth, limits, validation and response shaping around a :class:`ModelRunner`."""

    def __init__(self, runner: ModelRunner, *, max_instances: int, max_body_bytes: int,
                 auth_token: str | None = None, allowed_hosts: tuple[str, ...] = ("*",),
                 body_timeout_s: float = 10.0) -> None:
        self.runner = runner
        self.body_timeout_s = body_timeout_s
        self.healthy = runner.probe_is_finite()  # once per replica: the model is fixed while it lives
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.spec = runner.input_spec(max_instances)
        self.max_body_bytes = max_body_bytes
        self._token = auth_token.encode() if auth_token else None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "PredictionService":
        """Build from ``ServeArgs.model_dump()`` (artifact, storage_path, quantize, limits, auth)."""
        token = read_auth_token(settings.get("auth_token_env", ""), settings.get("auth_token_file", ""))
        runner = ModelRunner.from_artifact(settings["artifact"], storage_path=settings.get("storage_path", "runs"),
                                           quantize=settings.get("quantize", "none"))
        return cls(runner, max_instances=settings["max_instances"], max_body_bytes=settings["max_body_bytes"],
                   auth_token=token, allowed_hosts=tuple(settings.get("allowed_hosts") or ("*",)),
                   body_timeout_s=float(settings.get("body_timeout_s", 10.0)))

    def check_host(self, header: str | None) -> None:
        """400 unless the ``Host`` header (port stripped) is in ``allowed_hosts`` (or that holds ``*``)."""
        if "*" in self.allowed_hosts:
            return
        name = host_name(header)
        if name not in self.allowed_hosts:
            raise RequestError(400, f"Host header {header!r} is not served here; allowed: "
                                    f"{', '.join(sorted(self.allowed_hosts))} (serve.allowed_hosts)")

    def check_request(self, request: Request) -> None:
        """Host allow-list, then bearer auth: what every route checks first."""
        self.check_host(request.headers.get("host"))
        self.authorize(request.headers.get("authorization"))

    def authorize(self, header: str | None) -> None:
        """``Authorization: Bearer <token>`` compared in constant time (``hmac.compare_digest``)."""
        if self._token is None:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise RequestError(401, "missing bearer token: send the header 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise RequestError(401, "invalid bearer token")

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as the declared or received size passes the limit, and
        with 408 when it has not fully arrived within ``body_timeout_s`` (a trickling client must not
        hold a replica slot); a client that hangs up mid-body is a 400 nobody reads."""
        check_declared_length(request.headers.get("content-length"), self.max_body_bytes)
        check_content_type(request.headers.get("content-type"))
        chunks: list[bytes] = []

        async def receive() -> None:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > self.max_body_bytes:
                    raise RequestError(413, body_too_large_message(received, self.max_body_bytes))
                chunks.append(chunk)

        try:
            await asyncio.wait_for(receive(), timeout=self.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(408, f"request body not received within body_timeout_s={self.body_timeout_s:g} s") from None
        except ClientDisconnect:
            raise RequestError(400, "client disconnected before sending the whole body") from None
        return b"".join(chunks)

    async def predict(self, request: Request, infer: Infer) -> JSONResponse:
        """Full ``POST /v1/predict``: every bad input becomes its 4xx :func:`error_response`."""
        try:
            self.check_request(request)
            self.require_healthy()
            parsed = parse_predict_request(await self.read_body(request), self.spec)
        except RequestError as exc:
            return error_response(exc)
        answer = await infer(parsed.x)  # (N, K) or an Answer
        answer = answer if isinstance(answer, Answer) else Answer(answer)
        try:
            check_finite_answer(answer.probs, parsed.x)
        except RequestError as exc:
            return error_response(exc)
        predictions = self.runner.format_predictions(answer.probs, parsed.top_k)
        for prediction, note in zip(predictions, answer.notes or ()):
            prediction.update(note)
        return JSONResponse({"predictions": predictions, "model": answer.model or self.runner.model_info()})

    def model_card(self, request: Request) -> JSONResponse:
        try:
            self.check_request(request)
        except RequestError as exc:
            return error_response(exc)
        return JSONResponse(self.runner.served_card())

    def require_healthy(self) -> None:
        """503 when the loaded model's probe forward pass was not finite (see ``ModelRunner``)."""
        if not self.healthy:
            raise RequestError(503, "the served model answers NaN or infinite probabilities on a blank input; "
                                    "it cannot predict (redeploy a working artifact)")

    def health(self) -> JSONResponse:
        """``/healthz``: 200 with the model's identity, or 503 when the probe failed."""
        try:
            self.require_healthy()
        except RequestError as exc:
            return error_response(exc)
        return JSONResponse({"status": "ok", "model": self.runner.model_info()})
