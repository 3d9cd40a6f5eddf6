"""What every ``jobs/<stage>.py`` entry point shares: run one CLI stage inside a Ray job.

A Ray job runs its entrypoint in a copy of the submitted working dir, unpacked on the head node
under ``<ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>``. That copy is
temporary and its hash changes with every code change, so a *relative* ``run.storage_path``
(``runs`` in configs/digits.yaml) would put artifacts where neither you nor the next job finds them.
Inside a job a relative storage path is therefore taken under ``$RAYDISTILL_STORAGE_ROOT``
(default ``~/raydistill``) on the node that runs the job; absolute paths are used as given. On a
multi-node cluster the storage path must be a shared filesystem mounted at the same path on every
node (cluster.yaml mounts EFS at /mnt/shared and sets the root there).

Parsing, config checks and error messages are the CLI's own (:func:`raydistill.cli.commands.main`); this
module only adds the storage rule, one banner line and one footer line saying where results went.
"""
from __future__ import annotations

import logging

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Mapping

from raydistill.cli import commands as cli
from raydistill.core.config import Config, ConfigError

STORAGE_ROOT_ENV = "RAYDISTILL_STORAGE_ROOT"
DEFAULT_STORAGE_ROOT = "~/raydistill"
# Set by Ray's job supervisor for the entrypoint process only (runtime env + metadata as JSON).
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RUNTIME_ENV_HINT = "--runtime-env jobs/runtime_env.yaml"

logger = logging.getLogger(__name__)


def in_ray_job(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a ``ray job submit`` entrypoint (not in a plain ``python`` run)."""
    return JOB_CONFIG_ENV in env


def job_submission_id(env: Mapping[str, str] = os.environ) -> str:
    """The ``raysubmit_...`` id of the running job, or ``""`` outside a job."""
    try:
        return json.loads(env.get(JOB_CONFIG_ENV, "{}")).get("metadata", {}).get("job_submission_id", "")
    except (ValueError, AttributeError):
        return ""


def storage_root(env: Mapping[str, str] = os.environ) -> Path:
    """Where relative storage paths go inside a job: ``$RAYDISTILL_STORAGE_ROOT`` or ``~/raydistill``."""
    return Path(os.path.expanduser(env.get(STORAGE_ROOT_ENV) or DEFAULT_STORAGE_ROOT)).resolve()


def quiet_config(stage: str, argv: list[str]) -> Config | None:
    """The config ``raydistill <stage> argv`` would run with, or None when argv or config is bad.

    Silent on purpose: :func:`raydistill.cli.commands.main` parses again and reports the error itself, so
    a job's log shows exactly the CLI's message, once.
    """
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli.config_from_args(cli.build_parser().parse_args([stage, *argv]))
        except (Exception, SystemExit):  # noqa: BLE001 - any failure is cli.main's to report
            return None


def job_storage_path(cfg: Config, env: Mapping[str, str] = os.environ) -> Path:
    """Where the stage writes: ``run.storage_path``, a relative one under :func:`storage_root` in a job."""
    raw = Path(os.path.expanduser(cfg.run.storage_path))
    if raw.is_absolute() or not in_ray_job(env):
        return cfg.storage_dir()
    root = storage_root(env)
    inside = (root / raw).resolve()
    if not inside.is_relative_to(root):
        raise ConfigError(f"run.storage_path: {cfg.run.storage_path!r} leaves {STORAGE_ROOT_ENV} ({root}) inside a "
                          f"job; use a path below it, or an absolute path")
    return inside


def workers_miss_checkout(env: Mapping[str, str] = os.environ, cwd: Path | None = None) -> bool:
    """True in a job whose working dir holds ``platform/`` but whose PYTHONPATH does not list it.

    Then the driver imports the submitted code (jobs/_common.py puts it on sys.path) while Ray
    workers import whatever raydistill is installed on their node, or fail to import it.
    """
    cwd = cwd or Path.cwd()
    if not in_ray_job(env) or not (cwd / "platform" / "raydistill").is_dir():
        return False
    entries = [Path(p) if Path(p).is_absolute() else cwd / p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    return (cwd / "platform").resolve() not in {e.resolve() for e in entries}


def serve_and_exit(cfg: Config, args=None) -> str:
    """``jobs/serve.py``: deploy the student and return, leaving the app running after the job.

    Unlike ``raydistill serve`` (which blocks until Ctrl-C and then removes the app), the job ends
    as soon as the app is healthy; remove the app later with ``serve delete <serve.app_name>``.
    ``jobs/serve.py promote|rollback`` ends the running app's canary as ``raydistill serve`` does.
    """
    from raydistill.serving.deploy import deploy, end_canary

    ref = getattr(args, "artifact", "") or cfg.serve.artifact
    action = getattr(args, "action", "run") or "run"
    if action != "run":
        return end_canary(cfg, ref, promote=action == "promote")
    url = deploy(cfg, ref, blocking=False)
    logger.info(f"serving {ref} at {url}\n  POST {url}v1/predict   GET {url}v1/model\n"
                f"  the app keeps running after this job; remove it with `serve delete {cfg.serve.app_name}`")
    return url


@contextlib.contextmanager
def _job_targets():
    """``serve`` runs :func:`serve_and_exit` in a job (deploy, then end); the CLI's table is restored after."""
    saved = dict(cli.STAGES)
    cli.register_stage("serve", "raydistill.cli.job:serve_and_exit", "deploy the student and exit")
    try:
        yield
    finally:
        cli.STAGES.clear()
        cli.STAGES.update(saved)


def run_job(stage: str, argv: list[str], env: Mapping[str, str] = os.environ) -> int:
    """Run ``raydistill <stage> argv`` as a job entry point; returns the CLI's exit code."""
    from raydistill import __file__ as package_file
    from raydistill.cli.console import attach_console

    attach_console()  # these lines go to the job's log before the CLI starts
    cfg = quiet_config(stage, argv)
    try:
        storage = job_storage_path(cfg, env) if cfg else None
    except ConfigError as exc:
        logger.error(f"error: {exc}")
        return 2
    # A later --set wins, so this pins the path without touching the user's own arguments.
    extra = ["--set", f"run.storage_path={json.dumps(str(storage))}"] if storage and in_ray_job(env) else []
    logger.info(f"[raydistill job] stage={stage} job={job_submission_id(env) or '-'} "
                f"raydistill={Path(package_file).parent} storage={storage or '?'}")
    if workers_miss_checkout(env):
        logger.warning(f"[raydistill job] warning: PYTHONPATH lacks this working dir's platform/, so Ray workers "
                       f"import the raydistill installed on each node; submit with {RUNTIME_ENV_HINT}")
    with _job_targets():
        code = cli.main([stage, *argv, *extra])
    logger.info(f"[raydistill job] stage={stage} exit={code} results under {storage or '?'}")
    return code


__all__ = ["run_job", "serve_and_exit", "in_ray_job", "job_submission_id", "storage_root",
           "job_storage_path", "workers_miss_checkout", "quiet_config", "STORAGE_ROOT_ENV"]
