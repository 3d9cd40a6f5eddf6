"""The Ray Serve deployment: a FastAPI ingress around :class:`~.service.PredictionService`.

Requests are batched across HTTP calls with ``@serve.batch``: up to ``max_batch_size`` requests
(each with its own N_i instances) are concatenated into one forward pass ``(sum N_i, C, H, W)``
and the probabilities split back. ``max_batch_size`` and ``batch_wait_timeout_s`` come from
``user_config`` and change at run time through :meth:`StudentDeployment.reconfigure` (no replica
restart); ``max_batch_size: 1`` turns batching off (requests go straight to the model).
"""
# No `from __future__ import annotations` here: Serve's class-based FastAPI views read the
# route methods' annotations as objects (a string "Request" would become a query parameter).
import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from raydistill.core.config import ServeSection
from raydistill.core.version import __version__
from raydistill.serving.canary import CANARY_TIMEOUT_S, REQUEST_KEY_HEADER, CanarySettings, to_canary
from raydistill.serving.cascade import CascadeSettings, escalated, merge
from raydistill.serving.metrics import ServeMetrics
from raydistill.serving.model_runner import ModelRunner
from raydistill.serving.openapi import document_model
from raydistill.serving.service import HEALTH_ROUTE, MODEL_ROUTE, PREDICT_ROUTE, Answer, PredictionService

logger = logging.getLogger(__name__)
app = FastAPI(title="raydistill student", version=__version__,
              description="A distilled student model over HTTP (Ray Serve). POST raw pixels to /v1/predict.")


_S = ServeSection()  # the one home of the serving defaults (reconfigure() changes them at run time)


class BatchSettings(BaseModel):
    """Batching: the teacher deployment's ``user_config``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_batch_size: int = Field(default=_S.max_batch_size, ge=1)
    batch_wait_timeout_s: float = Field(default=_S.batch_wait_timeout_s, ge=0)


async def _awaited(response):
    """``await response`` as a coroutine (``asyncio.wait_for`` takes coroutines and futures). Defined
    before the deployments: Serve ships their classes by value with the globals seen at decoration."""
    return await response


class ReplicaSettings(BatchSettings, CascadeSettings, CanarySettings):
    """``user_config`` of the student deployment: batching, the cascade's knobs (unused without a
    teacher) and the canary's share (unused without a canary)."""


@serve.deployment(ray_actor_options={"num_cpus": _S.num_cpus}, max_ongoing_requests=_S.max_ongoing_requests,
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class StudentDeployment:
    """One replica: the verified student in memory, answering ``/v1/predict``, ``/v1/model``, ``/healthz``."""

    def __init__(self, settings: dict[str, Any], teacher: DeploymentHandle | None = None,
                 canary: DeploymentHandle | None = None) -> None:
        self.service = PredictionService.from_settings(settings)
        document_model(app, self.service.spec)  # /openapi.json describes this model's inputs
        # One thread runs the forward passes so the event loop keeps reading and validating the
        # next requests meanwhile (torch releases the GIL while it computes).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._in_flight = 0  # requests between validation and their probabilities
        self.teacher = teacher  # the cascade's teacher deployment (serving/cascade.py), or None
        self.canary = canary  # the canary student's deployment (serving/canary.py), or None
        self._canary_info: dict[str, Any] | None = None
        self.metrics = ServeMetrics(self.service.runner.version)
        self.reconfigure({})  # Serve calls it again with the deployment's user_config, if any

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching (and cascade) settings at run time (Serve calls this on every ``user_config`` change)."""
        self.batch = ReplicaSettings.model_validate(user_config or {})
        self._batched_forward.set_max_batch_size(self.batch.max_batch_size)
        self._batched_forward.set_batch_wait_timeout_s(self.batch.batch_wait_timeout_s)

    @app.post("/v1/predict", **PREDICT_ROUTE)
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        canary = self.canary is not None and to_canary(request.headers.get(REQUEST_KEY_HEADER), self.batch.canary_fraction)
        answered: dict[str, str] = {}

        async def infer(x: np.ndarray) -> Answer:
            answer = await self._answer(x, canary)
            answered["version"] = (answer.model or {}).get("version", self.service.runner.version)
            return answer

        response = await self.service.predict(request, infer)
        self.metrics.request(response.status_code, time.perf_counter() - started, version=answered.get("version"))
        return response

    async def _answer(self, x: np.ndarray, canary: bool) -> Answer:
        """Probabilities ``(N, K)`` from the canary (when this request is its) or this replica's
        student; with a cascade, the unsure instances re-answered by the teacher, each noted."""
        probs, model = await self._from_canary(x) if canary else (None, None)
        if probs is None:
            probs = await self._infer(x)
            model = None if self.canary is None else {**self.service.runner.model_info(), "canary": False}
        version = (model or {}).get("version")
        if self.teacher is None:
            self.metrics.answered("student", len(probs), version=version)
            return Answer(probs, model=model)
        mask = escalated(probs, self.batch)
        teacher = await self._escalate(x[mask], version) if mask.any() else None
        probs, notes = merge(probs, teacher, mask)
        for who in ("student", "teacher"):
            self.metrics.answered(who, sum(n["answered_by"] == who for n in notes), version=version)
        return Answer(probs, notes, model)

    async def _from_canary(self, x: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """The canary's probabilities and identity, or ``(None, None)`` when it cannot answer (being
        removed by a promote/rollback, down): this replica's student answers instead, never a 5xx."""
        try:
            if self._canary_info is None:
                self._canary_info = await asyncio.wait_for(_awaited(self.canary.info.remote()), CANARY_TIMEOUT_S)
            response = self.canary.remote(x)
            try:
                probs = await asyncio.wait_for(_awaited(response), CANARY_TIMEOUT_S)
            except asyncio.TimeoutError:
                response.cancel()
                raise
        except Exception as exc:  # noqa: BLE001 - any canary failure (or timeout) falls back to the primary
            logger.warning(f"canary did not answer, the primary does: {type(exc).__name__}: {exc}")
            return None, None
        if probs.shape != (len(x), self.service.spec.num_classes) or not np.isfinite(probs).all():
            return None, None
        return probs, {**self._canary_info, "canary": True}

    async def _escalate(self, x: np.ndarray, version: str | None = None) -> np.ndarray | None:
        """The teacher's probabilities for ``x`` ``(M, C, H, W)``, or None when it does not answer
        within ``cascade_timeout_s`` (down, scaling from zero, overloaded) or answers something unusable."""
        self.metrics.escalated(len(x), version=version)
        response = self.teacher.remote(x)
        try:
            probs = await asyncio.wait_for(_awaited(response), timeout=self.batch.cascade_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure of the teacher leaves the student's answer
            response.cancel()
            logger.warning(f"cascade: the teacher did not answer {len(x)} instance(s): {type(exc).__name__}: {exc}")
            self.metrics.escalation_failed(len(x), version=version)
            return None
        if probs.shape != (len(x), self.service.spec.num_classes) or not np.isfinite(probs).all():
            self.metrics.escalation_failed(len(x), version=version)
            return None
        return probs

    @app.get("/v1/model", **MODEL_ROUTE)
    async def model_card(self, request: Request) -> JSONResponse:
        return self.service.model_card(request)

    @app.get("/healthz", **HEALTH_ROUTE)
    async def healthz(self) -> JSONResponse:
        response = self.service.health()
        if response.status_code != 200:
            return response
        extra = {}
        if self.teacher is not None:
            extra["cascade"] = self.batch.model_dump(include=set(CascadeSettings.model_fields))
        if self.canary is not None:
            extra["canary"] = self.batch.model_dump(include=set(CanarySettings.model_fields))
        return JSONResponse({**json.loads(response.body), "batching": self.batch.model_dump(
            include=set(BatchSettings.model_fields)), **extra})

    def check_health(self) -> None:
        """Serve's replica health check: a model that answers NaN/inf is unhealthy (Serve replaces it)."""
        if not self.service.healthy:
            raise RuntimeError("the model's probe forward pass is not finite")

    async def _infer(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` raw pixels -> ``(N, K)`` probabilities.

        Opportunistic batching: a request that finds the replica idle runs at once (waiting
        ``batch_wait_timeout_s`` for company that is not coming only adds latency); requests that
        arrive while another is in flight queue up in ``@serve.batch`` and share a forward pass.
        """
        self._in_flight += 1
        try:
            if self.batch.max_batch_size > 1 and self._in_flight > 1:
                return await self._batched_forward(x)
            return await self._forward(x)
        finally:
            self._in_flight -= 1

    async def _forward(self, x: np.ndarray) -> np.ndarray:
        self.metrics.batch(len(x))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.service.runner.predict_proba, x)

    @serve.batch(max_batch_size=_S.max_batch_size, batch_wait_timeout_s=_S.batch_wait_timeout_s)
    async def _batched_forward(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over ``concat(xs)`` ``(sum N_i, C, H, W)``, split back per request."""
        bounds = np.cumsum([len(x) for x in xs])[:-1]
        return np.split(await self._forward(np.concatenate(xs)), bounds)


@serve.deployment(ray_actor_options={"num_cpus": _S.num_cpus}, max_ongoing_requests=_S.max_ongoing_requests,
                  logging_config={"enable_access_log": False})
class ModelDeployment:
    """A model behind the student's replicas (deployed as ``TeacherDeployment``, the cascade's teacher,
    or ``CanaryDeployment``): raw pixels ``(M, C, H, W)`` in, probabilities ``(M, K)`` out, batched
    across the callers; no HTTP route of its own (only the student's replicas call it)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.runner = ModelRunner.from_artifact(settings["artifact"], storage_path=settings.get("storage_path", "runs"),
                                                quantize=settings.get("quantize", "none"))
        self.healthy = self.runner.probe_is_finite()  # once: the model is fixed while the replica lives
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-forward")
        self.reconfigure({})

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batch = BatchSettings.model_validate(user_config or {})
        self.__call__.set_max_batch_size(self.batch.max_batch_size)
        self.__call__.set_batch_wait_timeout_s(self.batch.batch_wait_timeout_s)

    def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("the model's probe forward pass is not finite")

    def info(self) -> dict[str, str]:
        """``{"name", "version", "sha256", "quantize"}`` of the served artifact."""
        return self.runner.model_info()

    @serve.batch(max_batch_size=_S.max_batch_size, batch_wait_timeout_s=_S.batch_wait_timeout_s)
    async def __call__(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over ``concat(xs)`` ``(sum M_i, C, H, W)``, split back per caller."""
        bounds = np.cumsum([len(x) for x in xs])[:-1]
        loop = asyncio.get_running_loop()
        probs = await loop.run_in_executor(self._executor, self.runner.predict_proba, np.concatenate(xs))
        return np.split(probs, bounds)
