"""The same endpoints as the Serve deployment on a plain FastAPI app (one process, no Ray).

The latency benchmark runs it under uvicorn as the baseline: identical validation, model and
response code, so the difference measured is what Ray Serve's proxy, routing and batching add.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from raydistill.serving.openapi import document_model
from raydistill.serving.service import HEALTH_ROUTE, MODEL_ROUTE, PREDICT_ROUTE, PredictionService


def build_bare_app(settings: dict[str, Any]) -> FastAPI:
    """A FastAPI app serving ``settings["artifact"]`` (``ServeArgs.model_dump()`` keys), unbatched."""
    service = PredictionService.from_settings(settings)
    app = FastAPI(title="raydistill student (bare FastAPI)")
    document_model(app, service.spec)

    async def infer(x: np.ndarray) -> np.ndarray:
        return service.runner.predict_proba(x)

    @app.post("/v1/predict", **PREDICT_ROUTE)
    async def predict(request: Request) -> JSONResponse:
        return await service.predict(request, infer)

    @app.get("/v1/model", **MODEL_ROUTE)
    async def model_card(request: Request) -> JSONResponse:
        return service.model_card(request)

    @app.get("/healthz", **HEALTH_ROUTE)
    async def healthz() -> JSONResponse:
        return service.health()

    return app


def run_bare(settings: dict[str, Any], host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve :func:`build_bare_app` with uvicorn in this process until interrupted (the baseline)."""
    import uvicorn

    uvicorn.run(build_bare_app(settings), host=host, port=port, log_level="warning", access_log=False)
