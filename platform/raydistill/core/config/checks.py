"""The config rules' primitives: ``ConfigError`` and the checks that raise it naming the dotted key.

Shared by ``rules`` (training, tuning, federated, compress) and ``serve_rules`` (the Serve section)."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the dotted key."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def positive(cfg: Any, section: str, *names: str) -> None:
    """Each ``cfg.<section>.<name>`` must be > 0."""
    for name in names:
        value = getattr(getattr(cfg, section), name)
        require(value > 0, f"{section}.{name}", f"must be > 0, got {value}")


def one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    """``value`` must be one of ``choices``."""
    require(value in choices, key, f"must be one of {', '.join(choices)}; got {value!r}")


def fraction(value: float, key: str, *, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must lie in [0, 1], with either end open on request."""
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    require(lo_ok and hi_ok, key, f"must be in {lo}0, 1{hi}, got {value}")
