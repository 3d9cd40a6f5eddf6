"""Where the MLflow store is, and the one guard every MLflow call goes through.

The embedded default is a sqlite database beside the artifacts (``<run.storage_path>/mlflow.db``,
run files under ``<run.storage_path>/mlartifacts``): MLflow 3's default backend, with the model
registry and its aliases, no server to run. ``run.tracking_uri`` points at a team server instead.
Tracking must never break training: the first failing call logs ONE warning naming the store and
turns this store off; the stage goes on.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from raydistill.tracking.seed import try_seed_store

logger = logging.getLogger(__name__)

T = TypeVar("T")
DB_FILE, ARTIFACTS_DIR = "mlflow.db", "mlartifacts"
SERVER_SCHEMES = ("http://", "https://", "databricks")  # the server decides where run files go


def local_store_uri(storage_dir: Path | str) -> str:
    """``sqlite:////abs/storage/mlflow.db``: the store when ``run.tracking_uri`` is empty."""
    return f"sqlite:///{Path(storage_dir).resolve() / DB_FILE}"


def store_uri(cfg) -> str:
    return cfg.run.tracking_uri or local_store_uri(cfg.storage_dir())


def artifact_location(cfg) -> str | None:
    """Run files of a new experiment: beside the local store (not MLflow's ``./mlruns`` in whatever
    directory the command ran from); None lets a tracking server use its own artifact root."""
    return None if cfg.run.tracking_uri.startswith(SERVER_SCHEMES) else str(cfg.storage_dir() / ARTIFACTS_DIR)


def registered_model_name(cfg) -> str:
    """The model registry entry the chosen students are versions of: ``<run.name>-student``."""
    return f"{cfg.run.name}-student"


def ui_hint(uri: str, experiment_id: str | None, run_id: str) -> str:
    """The line telling the user how to look at the run (and how to get the UI when only the skinny
    client, which has no UI server, is installed)."""
    if uri.startswith(("http://", "https://")):
        return f"tracking: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    note = "" if _has_ui() else "  (the UI is in the full package: pip install 'mlflow>=3.17,<4')"
    return f"tracking: mlflow ui --backend-store-uri {uri}{note}"


def _has_ui() -> bool:
    """Whether this environment's ``mlflow ui`` can serve the web app (its server and built pages)."""
    import importlib.util

    import mlflow

    return importlib.util.find_spec("flask") is not None and \
        (Path(mlflow.__file__).parent / "server" / "js" / "build").is_dir()


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


class Store:
    """An ``MlflowClient`` on one store and one experiment, behind :meth:`call`'s guard."""

    def __init__(self, uri: str, artifact_location: str | None, experiment: str) -> None:
        self.uri, self.artifact_location, self.experiment = uri, artifact_location, experiment
        self.experiment_id: str | None = None
        self.enabled = True
        self._client = None

    def call(self, what: str, fn: Callable[[Any], T]) -> T | None:
        """``fn(client)``; on any exception (import, connection, disk, MLflow): one warning, this store
        off, None returned. Every MLflow call in the package goes through here."""
        if not self.enabled:
            return None
        try:
            return fn(self._client or self._connect())
        except Exception as exc:  # noqa: BLE001 - tracking never breaks training, whatever failed
            self.enabled = False
            logger.warning(f"tracking: {what} failed on the MLflow store {self.uri} ({_short(exc)}); "
                           f"tracking is off for the rest of this run, which goes on")
            return None

    def _connect(self):
        from mlflow.tracking import MlflowClient

        if self.uri.startswith(("http://", "https://")):
            # a server that does not answer costs a few seconds, not MLflow's default ~4 minutes of retries
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            if self.artifact_location:  # a copy of an empty store instead of MLflow's 3-4 s of migrations
                try_seed_store(db, Path(self.artifact_location))
        client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = _experiment_id(client, self.experiment, self.artifact_location)
        self._client = client
        return client


def _experiment_id(client, name: str, artifact_location: str | None) -> str:
    """The experiment named ``name`` (one per ``run.name``), created or restored as needed."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except Exception:
            found = client.get_experiment_by_name(name)  # another command created it meanwhile
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id
