"""Shared by the ``jobs/<stage>.py`` entry points: import raydistill from this checkout, run a stage.

``ray job submit --working-dir .`` runs ``python jobs/<stage>.py`` in a copy of the repo, where
``sys.path[0]`` is that copy's ``jobs/`` — not ``platform/``. Putting ``<copy>/platform`` first on
``sys.path`` makes the driver run the code that was submitted rather than whatever raydistill is
installed on the head node. Ray workers get the same copy through ``PYTHONPATH=platform`` in
``jobs/runtime_env.yaml`` (their working directory is the unpacked copy on every node).
"""
from __future__ import annotations

import sys
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[1] / "platform"


def use_checkout() -> None:
    """Import ``raydistill`` from ``<repo>/platform`` (this checkout) in this process."""
    if (PLATFORM / "raydistill" / "__init__.py").is_file() and str(PLATFORM) not in sys.path:
        sys.path.insert(0, str(PLATFORM))


def main(stage: str) -> None:
    """``python jobs/<stage>.py --config ... --set k=v ... [--address ...]``: the CLI stage, as a job."""
    use_checkout()
    from raydistill.cli.job import run_job

    sys.exit(run_job(stage, sys.argv[1:]))
