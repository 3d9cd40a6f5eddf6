"""Bounded HTTP load and polling helpers for the Serve tests (no Ray-remote code here)."""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np

DEPLOYMENT = "StudentDeployment"


def normalized_by_hand(x, normalization: dict) -> np.ndarray:
    """``(x - mean_c) / std_c`` per channel of raw pixels ``x`` ``(N, C, H, W)``, from a card's
    ``normalization`` (``{"mean": [C], "std": [C]}``), computed here in float64: the expected side of
    a prediction test must not reuse ``raydistill.core.data.normalize``, which the server itself runs."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.asarray(normalization["mean"], dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(normalization["std"], dtype=np.float64).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def wait_until(predicate, timeout_s: float, poll_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def answers_200(url: str, timeout_s: float = 2.0) -> bool:
    """GET ``url`` returns 200 (False on any HTTP/connection error)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def replica_actors(name: str, deployment: str = DEPLOYMENT) -> list:
    """Alive replica actors of ``deployment`` (StudentDeployment) in application `name`."""
    import ray
    from ray.util.state import list_actors

    # name this session's cluster: with address=None the state API looks for clusters on the
    # machine and fails when another one runs (other users of the box)
    address = ray.get_runtime_context().gcs_address
    return [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
            if a.class_name == f"ServeReplica:{name}:{deployment}"]


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    versions: Counter = field(default_factory=Counter)
    errors: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.failed


def run_load(url: str, payload: dict, *, threads: int, max_requests: int, max_seconds: float,
             stop: threading.Event | None = None, headers: dict | None = None,
             result: LoadResult | None = None, read_timeout: float = 10.0) -> LoadResult:
    """POST ``payload`` from ``threads`` clients until ``max_requests``, ``max_seconds`` or ``stop``;
    counts go into ``result`` (readable while the load runs); a request unanswered after
    ``read_timeout`` seconds counts as failed."""
    result, lock, issued = result or LoadResult(), threading.Lock(), [0]
    stop = stop or threading.Event()
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(timeout=read_timeout, headers=headers) as http:
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:  # reserve one of the max_requests slots
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                try:
                    r = http.post(f"{url}v1/predict", json=payload)
                    good, info = r.status_code == 200, (r.json()["model"]["version"] if r.status_code == 200
                                                        else f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as exc:
                    good, info = False, repr(exc)
                with lock:
                    if good:
                        result.ok += 1
                        result.versions[info] += 1
                    else:
                        result.failed += 1
                        result.errors.append(info)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max_seconds + 15)
    return result
