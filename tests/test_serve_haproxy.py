"""``serve.ingress: haproxy``: the CLI starts its own local Ray with Ray's direct-ingress flags, so
HAProxy (not Serve's proxy actor) answers on ``serve.host:serve.port`` and forwards to replicas that
serve HTTP themselves. Same app, same validation, same answers; Ctrl-C still shuts it all down.

Runs ``raydistill serve`` as a subprocess: the flags must be in the environment of the processes Ray
starts, which the test session's shared Ray runtime was started without.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch

from _serve_helpers import answers_200, normalized_by_hand, wait_until
from conftest import REPO, free_port
from raydistill.core.artifacts import load_artifact


pytestmark = pytest.mark.ray


def _listener_process_name(port: int) -> str:
    """Name of the process listening on TCP ``port`` ("" if none), from Linux's /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A = LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return (proc / "comm").read_text().strip()
        except OSError:
            continue
    return ""


@pytest.mark.timeout(240)
def test_cli_with_haproxy_ingress_serves_the_same_answers_and_shuts_down_on_sigint(local_student):
    # Arrange: the blocking CLI with its own Ray (no RAY_ADDRESS), HAProxy ingress, a free port.
    from sklearn.datasets import load_digits

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "raydistill.cli.commands", "serve", "--artifact", str(local_student),
         "--set", "serve.ingress=haproxy", "--set", f"serve.port={port}", "--set", "serve.max_replicas=1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        up = wait_until(lambda: answers_200(f"{url}healthz") or proc.poll() is not None, timeout_s=150)
        assert up, "no /healthz in 150 s"
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        pixels = load_digits().images[:8, None].astype(np.float32)

        # Act
        listener = _listener_process_name(port)
        answer = httpx.post(f"{url}v1/predict", json={"instances": pixels.tolist()}, timeout=10).json()
        bad = httpx.post(f"{url}v1/predict", json={"instances": [np.ones((28, 28)).tolist()]}, timeout=10)
        card = httpx.get(f"{url}v1/model", timeout=10).json()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()

    # Assert: HAProxy owns the port, answers equal the model's own forward pass, bad input is a 4xx.
    assert listener == "haproxy", f"port {port} is served by {listener!r}, not HAProxy"
    model, artifact_card = load_artifact(local_student)
    with torch.no_grad():
        expected = model(torch.as_tensor(normalized_by_hand(pixels, artifact_card["normalization"]))).argmax(1).tolist()
    assert [p["label"] for p in answer["predictions"]] == expected
    assert bad.status_code == 422 and "expected shape [1, 8, 8] or [8, 8], got [28, 28]" in bad.text
    assert card["weights_sha256"] == artifact_card["weights_sha256"]
    assert proc.returncode == 0, out[-3000:]
    assert not answers_200(f"{url}healthz"), "still serving after SIGINT"
