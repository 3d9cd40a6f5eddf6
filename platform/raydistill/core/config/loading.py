"""Typed configuration tree: YAML files plus dotted ``--set key=value`` overrides.

Every value is checked at the door: an unknown key, a value of the wrong type or one out
of range raises :class:`ConfigError` naming the dotted key, before any Ray work starts.
YAML is read with ``yaml.safe_load`` only (no tags that import code).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from .rules import ConfigError, validate

__all__ = ["load_config", "config_from_dict", "save_config", "parse_override"]

from .schema import Config

INT64_MAX = 2**63 - 1


# --- building and checking -----------------------------------------------------------------


def _long(value: int) -> str:
    """A huge integer as a message shows it: its first 20 digits and how many there are."""
    return f"{str(value)[:20]}... ({len(str(abs(value)))} digits)"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if abs(value) > INT64_MAX:  # YAML reads any number of digits; torch and numpy take 64 bits
            raise ConfigError(f"{key}: {_long(value)} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not (abs(value) <= sys.float_info.max and math.isfinite(value)):  # .inf/.nan pass every range check;
            shown = value if isinstance(value, float) else _long(value)  # an int past 1.8e308 overflows float()
            raise ConfigError(f"{key}: must be a finite number, got {shown}")
        return float(value)
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # YAML reads `--set distill.hint_layer=12` as a number; layer names are strings
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in known:
            raise ConfigError(f"unknown config key '{key}'; known: {', '.join(sorted(known))}")
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"distill.temperature=4"`` -> ``("distill.temperature", 4)`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"--set {text}: the value is not valid YAML ({problem})") from exc


def _merge_defaults(tree: dict[str, Any]) -> dict[str, Any]:
    """Merge a partial tree over the defaults so that overrides of a nested mapping keep siblings.
    A model spec that names another model than the default starts from no arguments: the default
    model's ``args`` (e.g. the MLP's ``hidden``) mean nothing to ``resnet8x4``."""
    base = Config().to_dict()

    def merge(dst: dict, src: dict) -> dict:
        if "args" in dst and "args" not in src and src.get("name", dst.get("name")) != dst.get("name"):
            dst["args"] = {}
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "args":
                merge(dst[k], v)
            else:
                dst[k] = v
        return dst

    return merge(base, tree)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read YAML (or defaults when ``path`` is None), apply overrides, validate.

    Raises
    ------
    ConfigError
        Missing file, unknown key, wrong type or out-of-range value; names the dotted key.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                              "save the config as UTF-8") from exc
        except OSError as exc:
            raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc})") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, _merge_defaults(tree), "")
    validate(cfg)
    return cfg


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (used inside Ray workers)."""
    cfg = _build(Config, _merge_defaults(tree), "")
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def saved_run_config(current: Config, saved: str | os.PathLike, *, what: str) -> Config:
    """The config a run saved when it started (``saved``), for ``--resume``: the run's settings are
    fixed; only how this call connects and logs (``run.address``, ``run.quiet``, ``run.verbose``)
    comes from ``current``. ``what`` names the run kind in the error when the file is missing."""
    import dataclasses

    if not Path(saved).is_file():
        raise ConfigError(f"--resume: {Path(saved).parent} is not a raydistill {what} ({Path(saved).name} is missing)")
    old = load_config(saved)
    run = dataclasses.replace(old.run, address=current.run.address, quiet=current.run.quiet,
                              verbose=current.run.verbose)
    return dataclasses.replace(old, run=run)
