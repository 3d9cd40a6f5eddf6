"""Request validation for ``POST /v1/predict``: pure functions over bytes and JSON, no Ray, no HTTP.

Every failure raises :class:`RequestError` carrying the HTTP status and a message that says what is
wrong, so a bad request always becomes a 4xx, never a 5xx:

=====  ==========================================================================================
400    body is not JSON (or empty, not UTF-8, nested too deep), bad ``Content-Length``
401    missing or wrong bearer token (checked in :mod:`.service`)
413    body larger than ``max_body_bytes``; more than ``max_instances`` instances
415    ``Content-Type`` is not ``application/json``
422    valid JSON of the wrong form: missing/empty ``instances``, unknown fields, wrong shape,
       non-numeric, NaN/inf or out-of-float32-range values, bad ``top_k`` (and, checked after the
       forward pass in :mod:`.service`, finite values so large that the model's answer overflows)
=====  ==========================================================================================

Instances are raw pixels in the model's input shape ``(C, H, W)``; when ``C == 1`` the channel axis
may be left out (``(H, W)``, e.g. an 8x8 digit). The result is one float32 array ``(N, C, H, W)``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

ALLOWED_FIELDS = ("instances", "top_k")
_NUMBER_KINDS = "iuf"  # numpy dtype kinds that are numbers (b=bool, U=str, O=mixed/ragged are not)
FLOAT32_MAX = float(np.finfo(np.float32).max)


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (4xx), ``str()`` the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """What an instance must look like, from the model card."""

    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    max_instances: int = 256

    def accepted_shapes(self) -> list[tuple[int, ...]]:
        """``[(C, H, W)]``, plus ``(H, W)`` when there is a single channel."""
        shapes = [tuple(self.input_shape)]
        if self.input_shape[0] == 1:
            shapes.append(tuple(self.input_shape[1:]))
        return shapes

    def describe_shape(self) -> str:
        return " or ".join(str(list(s)) for s in self.accepted_shapes())


@dataclass(frozen=True)
class PredictRequest:
    """A validated request: raw pixels ``x`` ``(N, C, H, W)`` float32 and the optional ``top_k``."""

    x: np.ndarray
    top_k: int | None


# --- transport-level checks ------------------------------------------------------------------


def check_content_type(header: str | None) -> None:
    """Accept ``application/json`` (parameters such as ``charset`` allowed), else 415."""
    media = (header or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        got = f"'{header}'" if header else "none"
        raise RequestError(415, f"Content-Type must be application/json, got {got}")


def check_declared_length(header: str | None, max_body_bytes: int) -> None:
    """Refuse early when ``Content-Length`` already says the body is too big (413) or is garbage (400)."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise RequestError(400, f"Content-Length must be an integer, got '{header}'") from None
    if declared < 0:
        raise RequestError(400, f"Content-Length must be >= 0, got {declared}")
    if declared > max_body_bytes:
        raise RequestError(413, body_too_large_message(declared, max_body_bytes))


def body_too_large_message(size: int, max_body_bytes: int) -> str:
    return f"request body is {size} bytes or more; the limit is max_body_bytes={max_body_bytes}"


def _reject_constant(name: str) -> Any:
    """``json.loads`` hook: Python's parser accepts NaN/Infinity, which are not JSON; refuse them."""
    raise RequestError(422, f"non-finite number {name} is not allowed; values must be finite numbers")


def parse_json_body(raw: bytes) -> dict:
    """Bytes -> JSON object. Empty, non-UTF-8 or malformed bodies are 400; a non-object is 422."""
    if not raw.strip():
        raise RequestError(400, 'request body is empty; send JSON like {"instances": [[...]]}')
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, "
                                f"column {exc.colno})") from None
    except RecursionError:
        raise RequestError(400, "request body is not usable JSON: nested too deeply") from None
    except RequestError:  # from _reject_constant (a ValueError too)
        raise
    except ValueError as exc:  # e.g. an integer beyond Python's int-digit limit (4,300 digits)
        raise RequestError(400, f"request body is not usable JSON: {str(exc)[:120]}") from None
    if not isinstance(payload, dict):
        raise RequestError(422, f'body must be a JSON object like {{"instances": [...]}}, got a JSON '
                                f"{_json_type(payload)}")
    return payload


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


# --- the predict payload ---------------------------------------------------------------------


def parse_predict_request(raw: bytes, spec: InputSpec) -> PredictRequest:
    """Validate a whole ``/v1/predict`` body (after the transport checks) against ``spec``."""
    payload = parse_json_body(raw)
    unknown = sorted(set(payload) - set(ALLOWED_FIELDS))
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: "
                                f"{', '.join(ALLOWED_FIELDS)}")
    if "instances" not in payload:
        raise RequestError(422, "missing field 'instances': a list of inputs, each of shape "
                                f"{spec.describe_shape()}")
    # 'true'/'false' only appear as JSON booleans here (no strings are accepted), and numpy would
    # silently turn a boolean mixed with numbers into 1/0: look for them exactly when present.
    strict = b"true" in raw or b"false" in raw
    x = instances_to_array(payload["instances"], spec, strict=strict)
    return PredictRequest(x=x, top_k=parse_top_k(payload.get("top_k"), spec.num_classes))


def parse_top_k(value: Any, num_classes: int) -> int | None:
    """``None`` or an integer in ``1..num_classes``. As in JSON Schema, a number with no fractional
    part is an integer (``3.0`` is 3); booleans are not."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= num_classes:
        raise RequestError(422, f"top_k must be an integer in 1..{num_classes}, got {json.dumps(value)}")
    return value


def instances_to_array(instances: Any, spec: InputSpec, *, strict: bool = False) -> np.ndarray:
    """A list of N instances -> float32 ``(N, C, H, W)``, or :class:`RequestError`.

    The fast path is one ``np.asarray``; only when it fails (ragged, mixed types) or ``strict``
    is set does a per-element walk run, to name the first offending element.
    """
    if not isinstance(instances, list):
        raise RequestError(422, f"'instances' must be a list of inputs, got a JSON {_json_type(instances)}")
    if not instances:
        raise RequestError(422, "'instances' is empty: send at least one input")
    if len(instances) > spec.max_instances:
        raise RequestError(413, f"too many instances: {len(instances)} > max_instances={spec.max_instances}; "
                                "split the request")
    arr = _as_numeric_array(instances)
    if arr is None or strict:
        for i, inst in enumerate(instances):
            check_instance(inst, spec, f"instances[{i}]")
        if arr is None:  # each instance is fine alone: some are (H, W), others (1, H, W)
            arr = np.stack([np.asarray(inst, np.float64).reshape(spec.input_shape) for inst in instances])
    return _finite_float32(_to_nchw(arr, spec), spec)


def _as_numeric_array(instances: list) -> np.ndarray | None:
    """``np.asarray`` when it yields a regular array of numbers, else ``None``."""
    try:
        arr = np.asarray(instances)
    except (ValueError, OverflowError):  # ragged, or > 32 dims
        return None
    return arr if arr.dtype.kind in _NUMBER_KINDS else None


def _to_nchw(arr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Reshape a regular ``(N, *shape)`` array to ``(N, C, H, W)`` or name the shape mismatch."""
    shape = tuple(arr.shape[1:])
    if shape not in spec.accepted_shapes():
        raise RequestError(422, f"instances[0]: expected shape {spec.describe_shape()}, got {list(shape)}")
    return arr.reshape((len(arr), *spec.input_shape))


def _finite_float32(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    """float32 copy; NaN/inf and values beyond float32 range (``|x| > FLOAT32_MAX``, checked before
    the cast, which would round some of them down to the maximum) are 422."""
    with np.errstate(over="ignore", invalid="ignore"):
        in_range = np.abs(x.astype(np.float64)) <= FLOAT32_MAX  # False for NaN too
        x32 = x.astype(np.float32)
    finite = in_range.reshape(len(x32), -1).all(axis=1)  # (N,)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise RequestError(422, f"instances[{bad}] holds a value that is not a finite float32 "
                                f"(NaN, inf, or |x| > {FLOAT32_MAX:.3g})")
    return x32


def check_instance(inst: Any, spec: InputSpec, path: str) -> None:
    """Walk one instance and raise a 422 naming the first element that breaks the expected shape."""
    got = apparent_shape(inst)
    candidates = [s for s in spec.accepted_shapes() if len(s) == len(got)]
    if not candidates:
        raise RequestError(422, f"{path}: expected shape {spec.describe_shape()}, got {got}")
    _check_nested(inst, candidates[0], path, spec)


def apparent_shape(value: Any, limit: int = 8) -> list[int]:
    """Lengths along the first element of each nesting level, e.g. ``[1, 8, 8]`` (at most ``limit``)."""
    shape: list[int] = []
    while isinstance(value, list) and len(shape) < limit:
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_nested(value: Any, shape: Sequence[int], path: str, spec: InputSpec) -> None:
    if not shape:
        _check_number(value, path)
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        got = f"length {len(value)}" if isinstance(value, list) else f"a JSON {_json_type(value)}"
        raise RequestError(422, f"{path}: expected a list of length {shape[0]}, got {got} "
                                f"(each instance has shape {spec.describe_shape()})")
    for j, item in enumerate(value):
        _check_nested(item, shape[1:], f"{path}[{j}]", spec)


def _check_number(value: Any, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(422, f"{path}: expected a number, got {json.dumps(value)[:40]}")
    in_range = abs(value) <= FLOAT32_MAX  # also true for ints, which math.isfinite may overflow on
    if not in_range or (isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(422, f"{path}: {value!r:.40} is not a finite float32")
