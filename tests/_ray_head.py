"""A real ``ray start --head`` for the job tests, and a teardown that stops only what it started.

``ray stop`` kills every Ray process on the machine — the test session's own runtime
(``ray_session``) and anyone else's cluster — so it is never used here. Instead:

- the head runs as ``ray start --head --block`` in a session of its own; SIGTERM makes that
  process stop the GCS, raylet, dashboard and workers it started (measured: all gone in ~6 s);
- every process of this cluster inherits a marker variable ``RAYDISTILL_TEST_HEAD=<random id>``
  (job drivers too, which Ray starts in sessions of their own); whatever still carries the marker
  after the grace period is SIGKILLed, and nothing else is touched;
- ``ray start`` gets ``PR_SET_PDEATHSIG=SIGTERM``, so a pytest killed from outside
  (``timeout -s KILL``) still takes its cluster down.

Token auth is on with a token of its own (``RAY_AUTH_TOKEN_PATH``), so the tests neither depend
on nor touch ``~/.ray/auth_token``. (Ray 2.60 writes that file on the first local ``ray.init()``
and then a plain ``ray start --head`` turns token auth on by itself, while a plain client without
``RAY_AUTH_MODE=token`` does not send the token: "Unauthorized: Missing authentication token".)
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
MARKER_ENV = "RAYDISTILL_TEST_HEAD"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Variables of the test session that must not leak into the head: its own Ray address and token,
# and the Train/Data tuning that jobs/runtime_env.yaml is supposed to provide.
_DROP_ENV = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_TMPDIR",
             "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_DATA_DISABLE_PROGRESS_BARS", "RAY_JOB_CONFIG_JSON_ENV_VAR")


@dataclass
class RayHead:
    """A running head: its job-server URL, the env its clients need, and where jobs write."""

    address: str  # http://127.0.0.1:<dashboard port>: job server and dashboard
    token: str
    env: dict[str, str]  # for `ray` CLI subprocesses (token auth, venv first on PATH)
    storage_root: Path  # RAYDISTILL_STORAGE_ROOT of the head: where relative storage paths go
    temp_dir: Path
    marker: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self):
        """A ``JobSubmissionClient`` that sends this head's token (whatever this process's Ray state)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.auth_headers)

    def ray_cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """``ray <args>`` run from the repo root, as a user in an activated venv would."""
        return subprocess.run([str(VENV_BIN / "ray"), *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def marked_processes(self, needle: str = "") -> list[int]:
        """PIDs of this cluster's processes (optionally only those whose cmdline contains ``needle``)."""
        return marked_pids(self.marker, needle)


def wait_for_status(client, job_id: str, *, timeout: float, until: tuple[str, ...] = TERMINAL) -> str:
    """Poll the job until its status is one of ``until``; returns it (raises on timeout)."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in until:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s; logs:\n{client.get_job_logs(job_id)}")


def wait_for_log(client, job_id: str, needle: str, *, timeout: float) -> str:
    """Poll the job's logs until they contain ``needle``; returns the logs."""
    deadline = time.monotonic() + timeout
    logs = ""
    while time.monotonic() < deadline:
        logs = client.get_job_logs(job_id)
        if needle in logs:
            return logs
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id}: {needle!r} not in logs after {timeout:.0f} s:\n{logs}")


def marked_pids(marker: str, needle: str = "") -> list[int]:
    """Processes whose environment holds ``RAYDISTILL_TEST_HEAD=<marker>``."""
    tag = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone, or not ours to read
            continue
        if tag in environ and needle.encode() in cmdline:
            found.append(int(entry.name))
    return found


# Exec'd in front of `ray start`: PR_SET_PDEATHSIG (1) survives exec, so the head gets SIGTERM when
# pytest dies, even by SIGKILL. A launcher rather than preexec_fn: forking a threaded process
# (the session's Ray runtime has threads) and running Python before exec can deadlock.
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                    "os.execv(sys.argv[1], sys.argv[1:])")


def head_env(temp_dir: Path, token_path: Path, storage_root: Path, marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_TMPDIR": str(temp_dir),
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", MARKER_ENV: marker,
                "RAYDISTILL_STORAGE_ROOT": str(storage_root), "RAY_USAGE_STATS_ENABLED": "0",
                # On SIGTERM `ray start --block` first drains the node for up to 30 s (for Serve on
                # Kubernetes); after a stopped Train job that is the full 30 s. Tear down at once.
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    return env


def start_head(ports: dict[str, int], *, num_cpus: int = 2, ready_timeout: float = 90) -> RayHead:
    """``ray start --head --block`` on the given free ports, dashboard on 127.0.0.1; waits for the job server."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rdj-", dir="/tmp"))  # short: unix socket paths are limited
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    marker = secrets.token_hex(8)
    head = RayHead(address=f"http://127.0.0.1:{ports['dashboard']}", token=token,
                   env=head_env(temp_dir, token_path, temp_dir / "storage", marker),
                   storage_root=temp_dir / "storage", temp_dir=temp_dir, marker=marker)
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={ports['gcs']}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}", f"--num-cpus={num_cpus}",
               f"--temp-dir={temp_dir}", f"--ray-client-server-port={ports['client']}",
               f"--dashboard-agent-listen-port={ports['agent_http']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
               f"--metrics-export-port={ports['metrics']}", f"--runtime-env-agent-port={ports['runtime_env']}",
               "--object-store-memory=300000000", "--disable-usage-stats"]
    log = open(temp_dir / "ray-start.log", "w")
    head.process = subprocess.Popen([sys.executable, "-c", _DIE_WITH_PARENT, *command], cwd=REPO, env=head.env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()  # the child holds its own copy
    try:
        _wait_until_ready(head, ready_timeout)
    except BaseException:
        stop_head(head)
        raise
    return head


def _wait_until_ready(head: RayHead, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            raise RuntimeError(f"ray start exited {head.process.returncode}:\n"
                               f"{(head.temp_dir / 'ray-start.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{head.address}/api/jobs/", headers=head.auth_headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"job server at {head.address} not ready after {timeout:.0f} s")


def stop_head(head: RayHead, grace: float = 30) -> None:
    """SIGTERM ``ray start --block`` (it stops what it started), then SIGKILL marked stragglers."""
    if head.process is not None and head.process.poll() is None:
        head.process.terminate()
        try:
            head.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(head.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while head.marked_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in head.marked_processes():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)
