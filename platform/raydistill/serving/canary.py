"""Canary traffic between two student versions: which requests the canary answers. No Ray.

A request goes to the canary when ``bucket(key) < canary_fraction``, where ``key`` is the
``X-Request-Key`` header (a caller that sends one stays on one version across requests and
replicas) or a random one, and

    bucket(key) = int(sha256(key)[:8], big-endian) / 2**64   in [0, 1),

uniform over keys, the same on every replica and every process (no Python ``hash`` salt).
``raydistill serve promote`` makes the canary the primary and ``raydistill serve rollback`` drops it
(serving/deploy.py): both redeploy the application, a rolling update.
"""
from __future__ import annotations

import hashlib
import uuid

from pydantic import BaseModel, ConfigDict, Field

from raydistill.core.config import ServeSection

REQUEST_KEY_HEADER = "x-request-key"
# A canary call that has not answered by then is given up and the primary answers: a canary being
# removed by promote/rollback can leave its callers' handle requests waiting for replicas that are gone.
CANARY_TIMEOUT_S = 5.0
_S = ServeSection()  # the one home of the canary's defaults


class CanarySettings(BaseModel):
    """The split, part of the student deployment's ``user_config`` (changes without a restart)."""

    model_config = ConfigDict(extra="forbid")

    canary_fraction: float = Field(default=_S.canary_fraction, ge=0, le=1, allow_inf_nan=False)


def bucket(key: str) -> float:
    """``key``'s place in ``[0, 1)``: the first 8 bytes of its sha256 as a big-endian integer / 2**64."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def to_canary(key: str | None, fraction: float) -> bool:
    """Whether the request with ``key`` (None: a fresh random key) goes to the canary."""
    return bucket(key or uuid.uuid4().hex) < fraction
