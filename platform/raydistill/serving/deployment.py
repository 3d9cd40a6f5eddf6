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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from raydistill.core.config import ServeSection
from raydistill.core.version import __version__
from raydistill.serving.openapi import document_model
from raydistill.serving.service import HEALTH_ROUTE, MODEL_ROUTE, PREDICT_ROUTE, PredictionService

app = FastAPI(title="raydistill student", version=__version__,
              description="A distilled student model over HTTP (Ray Serve). POST raw pixels to /v1/predict.")


_S = ServeSection()  # the one home of the serving defaults (reconfigure() changes them at run time)


class BatchSettings(BaseModel):
    """``user_config`` of the deployment."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=_S.max_batch_size, ge=1)
    batch_wait_timeout_s: float = Field(default=_S.batch_wait_timeout_s, ge=0)


@serve.deployment(ray_actor_options={"num_cpus": _S.num_cpus}, max_ongoing_requests=_S.max_ongoing_requests,
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class StudentDeployment:
    """One replica: the verified student in memory, answering ``/v1/predict``, ``/v1/model``, ``/healthz``."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.service = PredictionService.from_settings(settings)
        document_model(app, self.service.spec)  # /openapi.json describes this model's inputs
        # One thread runs the forward passes so the event loop keeps reading and validating the
        # next requests meanwhile (torch releases the GIL while it computes).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self._in_flight = 0  # requests between validation and their probabilities
        self.reconfigure({})  # Serve calls it again with the deployment's user_config, if any

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings at run time (Serve calls this on every ``user_config`` change)."""
        self.batch = BatchSettings.model_validate(user_config or {})
        self._batched_forward.set_max_batch_size(self.batch.max_batch_size)
        self._batched_forward.set_batch_wait_timeout_s(self.batch.batch_wait_timeout_s)

    @app.post("/v1/predict", **PREDICT_ROUTE)
    async def predict(self, request: Request) -> JSONResponse:
        return await self.service.predict(request, self._infer)

    @app.get("/v1/model", **MODEL_ROUTE)
    async def model_card(self, request: Request) -> JSONResponse:
        return self.service.model_card(request)

    @app.get("/healthz", **HEALTH_ROUTE)
    async def healthz(self) -> JSONResponse:
        response = self.service.health()
        if response.status_code != 200:
            return response
        return JSONResponse({**json.loads(response.body), "batching": self.batch.model_dump()})

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.service.runner.predict_proba, x)

    @serve.batch(max_batch_size=_S.max_batch_size, batch_wait_timeout_s=_S.batch_wait_timeout_s)
    async def _batched_forward(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over ``concat(xs)`` ``(sum N_i, C, H, W)``, split back per request."""
        bounds = np.cumsum([len(x) for x in xs])[:-1]
        return np.split(await self._forward(np.concatenate(xs)), bounds)
