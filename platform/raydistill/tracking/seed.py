"""A new local MLflow store in milliseconds instead of seconds.

MLflow builds a new sqlite store by running every alembic migration since its first schema: ~70
revisions, 3-4 s of CPU on a 2-core machine, paid by the first command on every new
``run.storage_path`` (and by every test that uses a fresh folder). Here MLflow builds one empty
store per MLflow version into a per-user cache (``~/.cache/raydistill/mlflow-<version>-empty.db``;
``RAYDISTILL_CACHE_DIR`` or ``XDG_CACHE_HOME`` move it), and every later new store starts as a byte
copy of it, its ``Default`` experiment pointed at the store's own run-file folder and stamped with
the current time. MLflow still checks the copy's schema revision when it opens it. Whatever fails
here (no writable cache, a disk without hard links) leaves the store to MLflow, as before.
"""
from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "RAYDISTILL_CACHE_DIR"
DEFAULT_EXPERIMENT_ID = 0  # MLflow's "Default" experiment, made with every new store


def cache_dir() -> Path:
    """``$RAYDISTILL_CACHE_DIR``, else ``$XDG_CACHE_HOME/raydistill``, else ``~/.cache/raydistill``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raydistill"


def template_path() -> Path:
    """The empty store for the installed MLflow (a new MLflow gets its own, never an old schema)."""
    import mlflow

    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _private_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def build_template(path: Path) -> None:
    """MLflow's own new store, built beside ``path`` and renamed into place (readers never see half)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = _private_sibling(path)
    scratch.unlink(missing_ok=True)
    store = SqlAlchemyStore(f"sqlite:///{scratch}", str(path.parent / "mlruns"))
    store.engine.dispose()
    os.replace(scratch, path)


def seed_store(db: Path, artifacts: Path) -> bool:
    """Make ``db`` a copy of the empty template (built first if missing) unless it exists; True if
    this call made it. ``db`` appears whole or not at all (a hard link of a finished copy), so two
    commands starting on one folder at once never see half a store; the loser keeps the winner's."""
    if db.exists():
        return False
    template = template_path()
    if not template.is_file():
        build_template(template)
    db.parent.mkdir(parents=True, exist_ok=True)
    scratch = _private_sibling(db)
    shutil.copyfile(template, scratch)
    try:
        _point_default_experiment(scratch, artifacts)
        os.link(scratch, db)
    except FileExistsError:
        return False
    finally:
        scratch.unlink(missing_ok=True)
    logger.debug(f"tracking: new store {db} from {template}")
    return True


def _point_default_experiment(db: Path, artifacts: Path) -> None:
    """The copied ``Default`` experiment's run files under this store's folder, created now (MLflow
    would have put them under ``./mlruns`` of whatever directory the command ran in)."""
    now = int(time.time() * 1000)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, last_update_time = ? "
                     "WHERE experiment_id = ?", (str(artifacts / str(DEFAULT_EXPERIMENT_ID)), now, now,
                                                 DEFAULT_EXPERIMENT_ID))
    conn.close()


def try_seed_store(db: Path, artifacts: Path) -> None:
    """:func:`seed_store`, or nothing if it fails (MLflow then builds the store itself)."""
    try:
        seed_store(db, artifacts)
    except Exception as exc:  # noqa: BLE001 - only a shortcut; MLflow's own path still works
        logger.debug(f"tracking: no template store ({type(exc).__name__}: {exc}); MLflow builds {db}")
