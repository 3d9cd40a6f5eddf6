"""A new local MLflow store starts as a copy of an empty one MLflow built (tracking/seed.py), no Ray.

Compared with a store MLflow builds itself on the same machine: the same tables, indexes and schema
revision; then MLflow opens the copy, and runs, metrics and the model registry work on it."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from raydistill.tracking import seed
from raydistill.tracking.store import Store


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(seed.CACHE_ENV, str(folder))
    return folder


def schema(db: Path) -> tuple[set, list]:
    """Every table/index definition (its lines as a set: two builds by MLflow itself list a table's
    constraints in different orders) and the alembic revision, read with sqlite3 (not MLflow)."""
    with sqlite3.connect(db) as conn:
        sql = {(kind, name, frozenset(line.strip().rstrip(",") for line in (text or "").splitlines()))
               for kind, name, text in conn.execute("SELECT type, name, sql FROM sqlite_master "
                                                    "WHERE name NOT LIKE 'sqlite_%'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    return sql, revision


def default_experiment(db: Path) -> tuple:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT name, artifact_location, lifecycle_stage, creation_time FROM experiments "
                           "WHERE experiment_id = 0").fetchone()
    conn.close()
    return row


def test_a_seeded_store_has_mlflows_own_schema_and_its_default_experiment_points_into_the_store(tmp_path, cache):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    by_mlflow = tmp_path / "mlflow-built" / "mlflow.db"
    by_mlflow.parent.mkdir()
    SqlAlchemyStore(f"sqlite:///{by_mlflow}", str(tmp_path / "mlruns")).engine.dispose()
    db, artifacts = tmp_path / "runs" / "mlflow.db", tmp_path / "runs" / "mlartifacts"
    before = int(time.time() * 1000)

    assert seed.seed_store(db, artifacts) is True

    assert schema(db) == schema(by_mlflow) and schema(db)[1]  # same tables, indexes and revision
    assert default_experiment(db)[:3] == ("Default", str(artifacts / "0"), "active")
    assert default_experiment(db)[3] >= before  # made now, not when the template was
    assert sorted(p.name for p in cache.iterdir()) == [seed.template_path().name]
    assert not list(db.parent.glob(".*.tmp"))  # no scratch copy left behind


def test_an_existing_store_is_never_replaced(tmp_path, cache):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"someone's store")

    assert seed.seed_store(db, tmp_path / "mlartifacts") is False
    assert db.read_bytes() == b"someone's store"


def test_mlflow_opens_the_copy_and_runs_metrics_and_registry_work_on_it(tmp_path, cache):
    storage = tmp_path / "runs"
    store = Store(f"sqlite:///{storage / 'mlflow.db'}", str(storage / "mlartifacts"), "exp")

    def log(client):
        run = client.create_run(store.experiment_id)
        client.log_metric(run.info.run_id, "val_accuracy", 0.5, step=1)
        client.create_registered_model("exp-student")
        return run.info.run_id

    run_id = store.call("log", log)

    assert store.enabled and run_id and seed.template_path().is_file()  # the store was seeded, then used
    history = store.call("read", lambda c: c.get_metric_history(run_id, "val_accuracy"))
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]
    assert store.call("read", lambda c: c.get_registered_model("exp-student").name) == "exp-student"
    assert store.call("read", lambda c: c.get_experiment(store.experiment_id).artifact_location) == \
        str(storage / "mlartifacts")


def test_an_unusable_cache_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(seed.CACHE_ENV, str(blocker))
    storage = tmp_path / "runs"
    store = Store(f"sqlite:///{storage / 'mlflow.db'}", str(storage / "mlartifacts"), "exp")

    experiments = store.call("read", lambda c: [e.name for e in c.search_experiments()])

    assert store.enabled and sorted(experiments) == ["Default", "exp"]
    assert default_experiment(storage / "mlflow.db")[1].endswith("mlruns/0")  # MLflow's own choice: not seeded
