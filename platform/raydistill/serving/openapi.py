"""The OpenAPI description of what ``POST /v1/predict`` accepts for the model being served. No Ray.

FastAPI cannot know the input shape when the routes are declared (it is in the artifact's card), so
each app documents its model once the model is loaded: :func:`document_model` puts
:func:`predict_body_schema` into the generated ``/openapi.json``. The schema says exactly what
:func:`~raydistill.serving.validation.parse_predict_request` accepts:

- ``instances``: 1..``max_instances`` items; each a nested array of numbers of the model's input
  shape ``(C, H, W)`` — or ``(H, W)`` when ``C == 1`` — every length fixed (``minItems == maxItems``),
  every number finite in float32 range (``|x| <= 3.4028235e38``; JSON has no NaN/inf);
- ``top_k``: an integer in ``1..K`` (K classes) or ``null``;
- no other fields.

A client generated from the spec therefore sends only requests the server answers with 200, and a
fuzzer (schemathesis) spends its cases on the model rather than on the 422 path.
"""
from __future__ import annotations

from typing import Any, Callable

from raydistill.serving.validation import FLOAT32_MAX, InputSpec

PREDICT_PATH = "/v1/predict"


def number_schema() -> dict[str, Any]:
    """One input value: a JSON number in float32 range (booleans are not numbers in JSON Schema)."""
    return {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}


def nested_array_schema(shape: tuple[int, ...]) -> dict[str, Any]:
    """Arrays nested ``len(shape)`` deep with exactly ``shape[i]`` items at depth ``i``, numbers inside;
    e.g. ``(8, 8)`` -> an array of 8 arrays of 8 numbers."""
    schema = number_schema()
    for length in reversed(shape):
        schema = {"type": "array", "minItems": length, "maxItems": length, "items": schema}
    return schema


def instance_schema(spec: InputSpec) -> dict[str, Any]:
    """One instance: the model's ``(C, H, W)``, or either of ``(1, H, W)`` / ``(H, W)`` for one channel."""
    shapes = [nested_array_schema(s) for s in spec.accepted_shapes()]
    schema = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    return {**schema, "description": f"raw pixels of shape {spec.describe_shape()}; the server normalizes "
                                     "them with the model card's mean/std"}


def predict_body_schema(spec: InputSpec) -> dict[str, Any]:
    """The JSON Schema of a ``POST /v1/predict`` body the server accepts for ``spec``."""
    return {
        "title": "PredictBody", "type": "object", "additionalProperties": False, "required": ["instances"],
        "properties": {
            "instances": {"type": "array", "minItems": 1, "maxItems": spec.max_instances,
                          "items": instance_schema(spec),
                          "description": f"1..{spec.max_instances} inputs (serve.max_instances)"},
            "top_k": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": spec.num_classes}, {"type": "null"}],
                      "description": f"also return the k most likely of the {spec.num_classes} classes"},
        },
    }


def document_model(app: Any, spec: InputSpec) -> None:
    """Make ``app``'s ``/openapi.json`` describe ``spec``'s inputs (FastAPI builds the document once,
    on the first request for it; this wraps that build)."""
    build: Callable[[], dict] = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = build()  # FastAPI keeps it as app.openapi_schema
            content = document["paths"][PREDICT_PATH]["post"]["requestBody"]["content"]
            content["application/json"]["schema"] = predict_body_schema(spec)
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi
