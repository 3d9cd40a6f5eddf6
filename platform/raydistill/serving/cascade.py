"""The confidence cascade: the student answers, the teacher takes the instances it is unsure of. No Ray.

For student probabilities ``p`` ``(N, K)`` the confidence of each instance is

- ``max_prob``: ``max_k p_k``;
- ``margin``: ``p_(1) - p_(2)``, the gap between the two largest probabilities;

both in ``[0, 1]``. Instances whose confidence is **below** ``threshold`` are escalated: their
answer is the teacher's ``q`` for the same raw input. So ``threshold = 0`` never escalates and
``threshold > 1`` always does. When the teacher cannot answer (down, timed out), the student's
answer stands and the instance says ``"escalation": "failed"``.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from raydistill.core.artifacts import ArtifactError
from raydistill.core.config import ServeSection

logger = logging.getLogger(__name__)

CASCADE_METRICS = ("max_prob", "margin")
_S = ServeSection()  # the one home of the cascade's defaults


class CascadeSettings(BaseModel):
    """The cascade's run-time knobs (part of the deployment's ``user_config``: changing them is a
    light update, no replica restart; ``raydistill cascade-report`` sweeps the threshold this way)."""

    model_config = ConfigDict(extra="forbid")

    cascade_threshold: float = Field(default=_S.cascade_threshold, ge=0, allow_inf_nan=False)
    cascade_metric: Literal[CASCADE_METRICS] = _S.cascade_metric
    cascade_timeout_s: float = Field(default=_S.cascade_timeout_s, gt=0, allow_inf_nan=False)


def confidence(probs: np.ndarray, metric: str) -> np.ndarray:
    """``(N,)`` confidence of each row of ``probs`` ``(N, K)``: ``max_prob`` or ``margin`` (module doc)."""
    if metric == "max_prob":
        return probs.max(axis=1)
    if metric == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]  # (N, 2): second largest, largest
        return top2[:, 1] - top2[:, 0]
    raise ValueError(f"cascade metric must be one of {', '.join(CASCADE_METRICS)}, got {metric!r}")


def escalated(probs: np.ndarray, settings: CascadeSettings) -> np.ndarray:
    """Boolean ``(N,)``: which instances go to the teacher (confidence below the threshold)."""
    return confidence(probs, settings.cascade_metric) < settings.cascade_threshold


def merge(student: np.ndarray, teacher: np.ndarray | None, mask: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The answers ``(N, K)`` and one note per instance: ``{"answered_by": "teacher"}`` where ``mask``
    and the teacher answered (``teacher`` ``(mask.sum(), K)``), else ``{"answered_by": "student"}``,
    plus ``"escalation": "failed"`` where the instance was escalated but ``teacher`` is None."""
    out = student.copy()
    notes: list[dict[str, Any]] = [{"answered_by": "student"} for _ in range(len(student))]
    if teacher is not None:
        out[mask] = teacher
    for i in np.flatnonzero(mask).tolist():
        notes[i] = {"answered_by": "teacher"} if teacher is not None else {"answered_by": "student",
                                                                            "escalation": "failed"}
    return out, notes


def check_pair(student_card: dict, other_card: dict, *, student: str, other: str, role: str = "teacher",
               key: str = "serve.cascade_teacher") -> None:
    """A model that answers in the student's place (a cascade's teacher, a canary) must share its
    class list and input shape: ArtifactError naming both artifacts and the setting otherwise."""
    for field, what in (("class_names", "class list"), ("input_shape", "input shape")):
        if list(student_card[field]) != list(other_card[field]):
            raise ArtifactError(f"{key}: {role} {other} has {what} {list(other_card[field])}, but student {student} "
                                f"has {list(student_card[field])}; a {role} must answer in the student's classes "
                                f"for the student's inputs")
