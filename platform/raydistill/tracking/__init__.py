"""tracking: MLflow runs for every stage, sweep and federated run, and the champion in the model registry.

``records`` (pure: config, model cards and sweep rows to params, metrics and tags), ``store`` (where
the store is, one guard that turns any MLflow failure into one warning), ``runs`` (:class:`Tracker`).
Ray-free; imports ``mlflow`` only when a run starts. May import ``raydistill.core``; stages import it.
"""
from __future__ import annotations

from raydistill.tracking.runs import RunHandle, Tracker
from raydistill.tracking.store import local_store_uri, registered_model_name

__all__ = ["Tracker", "RunHandle", "local_store_uri", "registered_model_name"]
