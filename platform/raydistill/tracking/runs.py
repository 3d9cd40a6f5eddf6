"""MLflow runs of one command: :class:`Tracker` opens nested runs (pipeline > stage > trial) and a
:class:`RunHandle` logs into one: an artifact's card (params come from the config), a sweep's
trials as child runs, and the chosen student as the registered model's ``champion`` version.

    tracker = Tracker.from_config(cfg)
    with tracker.stage(cfg, "distill") as run:       # params: the config sections distill reads
        path = distill_student(cfg)
        run.log_artifact(path)                       # per-epoch metrics, test metrics, path + sha256
        run.register_champion(path)                  # <run.name>-student @champion

Every MLflow call goes through :meth:`Store.call`: a failing store is one warning, never an error.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from raydistill.core.artifacts import CARD_FILE, load_card
from raydistill.tracking.records import (Metric, card_metrics, config_params, lineage_tags, artifact_tags,
                                         trial_metrics, trial_params, trial_status, trial_tags)
from raydistill.tracking.store import Store, artifact_location, registered_model_name, store_uri, ui_hint

logger = logging.getLogger(__name__)

CHAMPION = "champion"  # the registered model's alias for the chosen student
MODEL_DIR = "model"  # run files of a registered version: the artifact's weights.pt + model.json
BATCH = {"params": 100, "metrics": 1000, "tags": 100}  # MLflow's log_batch limits per request


class Tracker:
    """The store and the runs open in this command (innermost last); inert when tracking is off."""

    def __init__(self, store: Store | None, model_name: str = "student") -> None:
        self.store, self.model_name = store, model_name
        self._open: list[str] = []

    @classmethod
    def from_config(cls, cfg) -> "Tracker":
        """The store ``run.tracking_uri`` names (or ``<storage>/mlflow.db``); none if ``run.tracking`` is false."""
        if not cfg.run.tracking:
            return cls(None)
        return cls(Store(store_uri(cfg), artifact_location(cfg), cfg.run.name), registered_model_name(cfg))

    def call(self, what: str, fn) -> Any:
        return self.store.call(what, fn) if self.store is not None else None

    @contextmanager
    def run(self, name: str, *, kind: str, params: Mapping[str, str] | None = None) -> Iterator["RunHandle"]:
        """One run around the block, a child of the innermost open run. FAILED (with an ``error`` tag)
        if the block raises, KILLED on Ctrl-C, else ``handle.status`` (FINISHED unless set)."""
        run_id = self._create(name, kind, self._open[-1] if self._open else None)
        handle = RunHandle(self, run_id)
        handle.log(params=params)
        if run_id:
            self._open.append(run_id)
        try:
            yield handle
        except KeyboardInterrupt:
            handle.status = "KILLED"
            raise
        except BaseException as exc:
            handle.status = "FAILED"
            handle.log(tags={"error": f"{type(exc).__name__}: {exc}"[:5000]})
            raise
        finally:
            self._close(handle)

    def stage(self, cfg, kind: str):
        """:meth:`run` named ``kind`` with the config sections stage ``kind`` reads as params."""
        return self.run(kind, kind=kind, params=config_params(cfg, kind))

    def finished_run(self, name: str, *, kind: str, params: Mapping[str, str], metrics: Sequence[Metric],
                     tags: Mapping[str, str], status: str) -> str | None:
        """A child of the innermost open run, logged and ended at once (a sweep's trial)."""
        run_id = self._create(name, kind, self._open[-1] if self._open else None)
        handle = RunHandle(self, run_id, status)
        handle.log(params=params, metrics=metrics, tags=tags)
        self._close(handle, hint=False)
        return run_id

    def _create(self, name: str, kind: str, parent: str | None) -> str | None:
        tags = {"raydistill.stage": kind, **({"mlflow.parentRunId": parent} if parent else {})}
        run = self.call(f"starting run {name!r}",
                        lambda c: c.create_run(self.store.experiment_id, run_name=name, tags=tags))
        return run.info.run_id if run is not None else None

    def _close(self, handle: "RunHandle", *, hint: bool = True) -> None:
        if not handle.run_id:
            return
        if self._open and self._open[-1] == handle.run_id:
            self._open.pop()
        ended = self.call("ending a run", lambda c: c.set_terminated(handle.run_id, handle.status) or True)
        if ended and hint and not self._open:  # the outermost run: say where to look, once
            logger.info(ui_hint(self.store.uri, self.store.experiment_id, handle.run_id))


@dataclass
class RunHandle:
    """One open run; every method is a no-op when tracking is off or the store failed (``run_id`` None)."""

    tracker: Tracker
    run_id: str | None
    status: str = "FINISHED"

    def log(self, *, params: Mapping[str, str] | None = None, metrics: Sequence[Metric] = (),
            tags: Mapping[str, str] | None = None) -> None:
        """Params, ``(key, value, step)`` metrics and tags, in as few requests as MLflow allows."""
        if not self.run_id or not (params or metrics or tags):
            return
        self.tracker.call("logging to a run",
                          lambda c: _log_batch(c, self.run_id, params or {}, metrics, tags or {}))

    def log_artifact(self, path: Path | str) -> None:
        """An artifact's story: per-epoch (or per-round) metrics, final test metrics, tags with its path,
        weights sha256 and parents' sha256, and its model card as a run file (``card/model.json``)."""
        if not self.run_id:
            return
        card = load_card(path)
        self.log(metrics=card_metrics(card), tags=artifact_tags(card, path))
        self.tracker.call("uploading the model card",
                          lambda c: c.log_artifact(self.run_id, str(Path(path) / CARD_FILE), "card"))

    def log_artifacts(self, paths: Sequence[Path]) -> None:
        """One artifact into this run; several (teachers side by side) as one child run each."""
        if len(paths) == 1:
            return self.log_artifact(paths[0])
        for path in paths:
            with self.tracker.run(Path(path).name, kind=load_card(path).get("kind", "artifact")) as child:
                child.log_artifact(path)

    def log_trials(self, rows: Sequence[Mapping], histories: Mapping[str, Any]) -> None:
        """A sweep's trials as child runs: params T, alpha, lr; the per-epoch curve; status and tags."""
        if not self.run_id:
            return
        for row in rows:
            self.tracker.finished_run(str(row["trial_id"]), kind="trial", params=trial_params(row),
                                      metrics=trial_metrics(histories.get(row["trial_id"])),
                                      tags=trial_tags(row), status=trial_status(row))

    def log_sweep(self, result) -> None:
        """A finished or interrupted sweep (``tuning.sweep.SweepResult``): its trials as child runs, then
        the chosen student's card and its registration as ``champion``; KILLED when interrupted
        (resume it), FAILED when no trial succeeded."""
        self.log_trials(result.rows, result.histories)
        if result.artifact is None:
            self.status = "KILLED" if result.interrupted else "FAILED"
            return
        self.log_artifact(result.artifact)
        self.register_champion(result.artifact)  # the card's tune section names the sweep and the trial

    def register_champion(self, path: Path | str, **lineage: Any) -> str | None:
        """Upload the artifact (weights.pt + model.json, no pickled code) as this run's ``model/`` files,
        make them a new version of ``<run.name>-student`` and point the ``champion`` alias at it. Tags:
        the weights' sha256 and the card's lineage (teacher sha256, sweep, trial; ``lineage`` adds)."""
        if not self.run_id:
            return None
        card, name = load_card(path), self.tracker.model_name
        tags = lineage_tags(card, path, **lineage)
        version = self.tracker.call(f"registering {name}@{CHAMPION}",
                                    lambda c: _register(c, self.run_id, Path(path), name, tags))
        if version is not None:
            logger.info(f"tracking: registered model {name} version {version} is @{CHAMPION} "
                        f"(sha256 {card['weights_sha256'][:12]})")
        return version


def _log_batch(client, run_id: str, params: Mapping[str, str], metrics: Sequence[Metric],
               tags: Mapping[str, str]) -> None:
    from mlflow.entities import Metric as MlflowMetric, Param, RunTag

    now = int(time.time() * 1000)
    batches = {"params": [Param(k, str(v)) for k, v in params.items()],
               "metrics": [MlflowMetric(k, v, now, step) for k, v, step in metrics],
               "tags": [RunTag(k, str(v)) for k, v in tags.items()]}
    for kind, items in batches.items():
        for start in range(0, len(items), BATCH[kind]):
            client.log_batch(run_id, **{kind: items[start:start + BATCH[kind]]})


def _register(client, run_id: str, path: Path, name: str, tags: Mapping[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, str(path), MODEL_DIR)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{MODEL_DIR}"
    try:
        client.create_registered_model(name, description="Chosen distilled students of raydistill "
                                                          "(weights.pt + model.json); @champion is the current one")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags))
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)
