"""Range rules for the ``serve`` section (split from ``rules``, which calls ``validate_serve``)."""
from __future__ import annotations

from typing import Any

from .checks import fraction, one_of, positive, require
from .schema import QUANTIZE_MODES, SERVE_METRICS_INTERVAL_S

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def validate_serve(cfg: Any) -> None:
    """The ``serve`` section: ports, batching and autoscaling ranges, ingress, hosts and auth."""
    s = cfg.serve
    require(1 <= s.port <= 65535, "serve.port", f"must be in 1..65535, got {s.port}")
    positive(cfg, "serve", "max_batch_size", "max_instances", "max_body_bytes", "num_cpus",
              "target_ongoing_requests", "max_ongoing_requests", "look_back_period_s", "body_timeout_s",
              "request_timeout_s")
    require(s.batch_wait_timeout_s >= 0, "serve.batch_wait_timeout_s", "must be >= 0")
    require(s.look_back_period_s > SERVE_METRICS_INTERVAL_S, "serve.look_back_period_s",
            f"must be > {SERVE_METRICS_INTERVAL_S:g} seconds, Ray Serve's metrics interval (a shorter window "
            f"averages one sample at most, and Ray Serve will refuse it), got {s.look_back_period_s}")
    for name in ("upscale_delay_s", "downscale_delay_s"):
        require(getattr(s, name) >= 0, f"serve.{name}", f"must be >= 0, got {getattr(s, name)}")
    require(bool(s.app_name.strip()), "serve.app_name", "must not be empty")
    require(1 <= s.min_replicas <= s.max_replicas, "serve.min_replicas",
            f"need 1 <= min_replicas <= max_replicas, got {s.min_replicas}, {s.max_replicas}")
    one_of(s.quantize, "serve.quantize", QUANTIZE_MODES)
    one_of(s.ingress, "serve.ingress", ("proxy", "haproxy"))
    require(s.route_prefix.startswith("/"), "serve.route_prefix", "must start with '/'")
    require(bool(s.allowed_hosts) and all(isinstance(h, str) and h.strip() for h in s.allowed_hosts),
            "serve.allowed_hosts", f"must be a non-empty list of host names (or [\"*\"]), got {s.allowed_hosts}")
    require(not (s.auth_token_env and s.auth_token_file), "serve.auth_token_file",
            "set either serve.auth_token_env or serve.auth_token_file, not both")
    _validate_cascade(s)
    public = s.host not in LOOPBACK_HOSTS
    auth = bool(s.auth_token_env or s.auth_token_file)
    require(not public or auth or s.allow_unauthenticated_public, "serve.host",
            f"{s.host} is reachable from other machines and serve.auth_token_env is empty, so anyone who can "
            f"reach it could use the model; set serve.auth_token_env to the env var holding a bearer token "
            f"(or serve.auth_token_file to a file holding it), or "
            f"set serve.allow_unauthenticated_public=true to expose it without auth on purpose")


def _validate_cascade(s: Any) -> None:
    """serve.cascade_* and serve.canary_fraction: checked even when off, so a typo fails before it is turned on."""
    one_of(s.cascade_metric, "serve.cascade_metric", ("max_prob", "margin"))
    require(s.cascade_threshold >= 0, "serve.cascade_threshold",
            f"must be >= 0 (0 = never escalate; above 1 = always), got {s.cascade_threshold}")
    require(s.cascade_timeout_s > 0, "serve.cascade_timeout_s", f"must be > 0 seconds, got {s.cascade_timeout_s}")
    fraction(s.canary_fraction, "serve.canary_fraction")
    require(0 <= s.cascade_min_replicas <= s.cascade_max_replicas and s.cascade_max_replicas >= 1,
            "serve.cascade_min_replicas", f"need 0 <= cascade_min_replicas <= cascade_max_replicas and "
            f"cascade_max_replicas >= 1, got {s.cascade_min_replicas}, {s.cascade_max_replicas}")
