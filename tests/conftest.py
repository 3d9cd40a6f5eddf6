"""Shared fixtures. Ray tests use ONE local Ray runtime per session, sized for 2 CPUs.

Every test has a hard timeout (pytest-timeout, pyproject); CI also kills the whole run from
outside. Train functions live in the package, never here (workers could not import them).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from raydistill.runtime import free_local_port

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAYDISTILL_SHARED", REPO.parent / "shared"))
FASHION_ROOT = SHARED / "datasets" / "fashion-mnist"

# Set before Ray starts (docs/ray-notes.md): fast Train health checks, quiet Ray Data, our own temp dir.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
_TMP = tempfile.mkdtemp(prefix="rdt-", dir="/tmp")
os.environ.setdefault("RAY_TMPDIR", _TMP)
# the empty MLflow store new stores are copied from (tracking/seed.py): built once per test session
os.environ.setdefault("RAYDISTILL_CACHE_DIR", os.path.join(_TMP, "cache"))


free_port = free_local_port


def pytest_collection_modifyitems(config, items):
    """A test using ``ray_session`` (directly or through a fixture) is marked ``ray`` here, so ``-m "not ray
    and not cluster"`` (the unit tier ``make test`` runs beside the Ray tier) never starts a Ray runtime."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


def load_benchmark(name: str):
    """Import benchmarks/<name>.py as its own module (definitions only: each guards its run with __main__),
    with benchmarks/ on sys.path as when it runs as a script (it may import a script beside it)."""
    import importlib.util
    import sys

    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ray_session():
    """The one local Ray runtime for the test session (2 CPUs, 512 MiB object store)."""
    import ray

    from raydistill.runtime import configure_data

    ray.init(address="local", num_cpus=2, object_store_memory=512 * 1024**2, include_dashboard=True,
             dashboard_host="127.0.0.1", log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"])
    configure_data(ray)
    yield ray
    ray.shutdown()
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture
def storage(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def tiny_overrides(storage: Path, *, epochs: int = 2, workers: int = 1) -> list[str]:
    """Overrides for fast stage runs on digits."""
    return [f"run.storage_path={storage}", "run.quiet=true", f"teacher.epochs={epochs}",
            f"distill.epochs={epochs}", f"distill.workers={workers}", "teacher.model.args={hidden: [64]}"]


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    """The real Fashion-MNIST IDX files shipped in ../shared (CI has them too)."""
    assert (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file(), f"Fashion-MNIST missing under {FASHION_ROOT}"
    return FASHION_ROOT


def make_local_artifact(folder: Path, *, kind: str = "student", model_name: str = "mlp",
                        model_args: dict | None = None, epochs: int = 3, seed: int = 0, data=None) -> Path:
    """A real artifact trained in-process on digits (or the ``data`` section's set; no Ray), for
    tests that only consume one."""
    from raydistill.core.artifacts import new_artifact_path, save_artifact
    from raydistill.core.cards import build_card
    from raydistill.core.config import DataSection
    from raydistill.core.data import load_data
    from raydistill.core.engine import evaluate, fit
    from raydistill.core.models import build_model
    import torch

    bundle = load_data(data or DataSection(), seed)
    args = model_args if model_args is not None else {"hidden": [32]}
    torch.manual_seed(seed)
    model = build_model(model_name, bundle.input_shape, bundle.num_classes, args)
    fit(model, bundle.x_train, bundle.y_train, epochs=epochs, lr=1e-2, batch_size=64, seed=seed)
    test = evaluate(model, bundle.x_test, bundle.y_test)
    card = build_card(kind=kind, model_name=model_name, model_args=args, bundle=bundle, seed=seed,
                      metrics={"test_accuracy": test["accuracy"], "val_accuracy": None, "history": []})
    return save_artifact(new_artifact_path(folder, kind), model, card)


@pytest.fixture(scope="session")
def local_student(tmp_path_factory) -> Path:
    """A small trained digits student artifact (in-process, seconds)."""
    return make_local_artifact(tmp_path_factory.mktemp("student"), epochs=5)


@pytest.fixture(scope="session")
def local_teacher(tmp_path_factory) -> Path:
    """A trained digits teacher artifact (in-process MLP 256-256, seconds)."""
    return make_local_artifact(tmp_path_factory.mktemp("teacher"), kind="teacher",
                               model_args={"hidden": [256, 256]}, epochs=8)


@pytest.fixture(scope="session", autouse=True)
def console():
    """Library messages reach stdout/stderr as they do under the CLI, whatever test ran first
    (``raydistill.cli.commands.main`` attaches the same handlers)."""
    from raydistill.cli.console import attach_console

    attach_console()
