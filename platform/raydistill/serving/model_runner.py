"""The served model: a verified artifact, the card's normalization, softmax and top-k. No Ray.

``ModelRunner.predict_proba`` maps raw pixels ``x`` ``(N, C, H, W)`` to class probabilities
``p = softmax(f((x - mean_c) / std_c))`` ``(N, K)``, where ``mean_c, std_c`` are the training
split's per-channel statistics recorded in the model card (the same transform ``data.normalize``
applied at training time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raydistill.core.artifacts import ArtifactError, json_safe, load_artifact, resolve_artifact
from raydistill.core.config.schema import QUANTIZE_MODES
from raydistill.core.data import normalize
from raydistill.core.models import quantize_int8
from raydistill.serving.fetch import FETCH_DIR, fetch_artifact, is_remote_uri
from raydistill.serving.validation import InputSpec



def locate_artifact(ref: str, storage_path: str) -> Path:
    """A local artifact dir for ``ref``: a path, ``chosen``, ``latest:<kind>``, or a URI fetched into
    ``<storage_path>/fetched/`` (serving/fetch.py)."""
    if is_remote_uri(ref):
        return fetch_artifact(ref, Path(storage_path) / FETCH_DIR)
    return resolve_artifact(ref, storage_path).resolve()


def redact_paths(value: Any) -> Any:
    """``value`` with each string that is an absolute path or a URI replaced by its last component
    (``/home/ann/runs/artifacts/student/student-1`` -> ``student-1``,
    ``s3://key:secret@bucket/a/student-1`` -> ``student-1``), recursively."""
    if isinstance(value, str):
        if "://" in value:  # drop scheme and host (and any credentials in it), keep the last path part
            scheme, rest = value.split("://", 1)
            path = rest.split("/", 1)[1] if "/" in rest else ""
            return path.rstrip("/").rsplit("/", 1)[-1] or f"{scheme}://..."
        if value.startswith(("/", "~", "\\")) or (len(value) > 2 and value[1:3] in (":\\", ":/")):
            return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
        return value
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    return value


@dataclass
class ModelRunner:
    """A loaded student ready to answer: model, card, and what the server adds to the card."""

    model: nn.Module
    card: dict[str, Any]
    version: str
    quantize: str = "none"
    serving: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_artifact(cls, ref: str, *, storage_path: str = "runs", quantize: str = "none") -> "ModelRunner":
        """Load ``ref`` (sha256 verified, ``weights_only``) and optionally quantize it.

        Raises
        ------
        ArtifactError
            missing, incomplete or tampered artifact; unknown ``quantize`` mode.
        """
        if quantize not in QUANTIZE_MODES:
            raise ArtifactError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
        path = locate_artifact(ref, storage_path)
        model, card = load_servable(path)
        serving: dict[str, Any] = {"artifact": ref, "path": str(path), "quantize": quantize}
        if quantize == "int8":
            names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
            model = quantize_int8(model)
            serving["quantized_modules"] = names
        return cls(model=model, card=card, version=_version_of(ref, path), quantize=quantize, serving=serving)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.card["input_shape"])  # (C, H, W)

    @property
    def class_names(self) -> list[str]:
        return list(self.card["class_names"])

    def probe_is_finite(self) -> bool:
        """One forward pass on a blank input ``(1, C, H, W)`` of zeros: are all probabilities finite?
        Weights are finite by construction (artifacts refuse NaN/inf); this catches a model whose
        activations overflow (e.g. float32 weights near 1e38), which would answer nothing but NaN."""
        probs = self.predict_proba(np.zeros((1, *self.input_shape), dtype=np.float32))
        return bool(np.isfinite(probs).all())

    def input_spec(self, max_instances: int) -> InputSpec:
        return InputSpec(self.input_shape, len(self.class_names), max_instances)

    def model_info(self) -> dict[str, str]:
        """``{"name", "version", "sha256", "quantize"}`` sent with every prediction."""
        return {"name": self.card.get("name", self.card["architecture"]["name"]), "version": self.version,
                "sha256": self.card["weights_sha256"], "quantize": self.quantize}

    def served_card(self) -> dict[str, Any]:
        """The artifact's card plus a ``serving`` section (quantization, where it was loaded from);
        non-finite numbers (cards written before they were refused) as ``null``, so it is valid JSON,
        and every filesystem path or URI cut to its last component (no user names, mount points or
        credentials leave the server; the sha256 values still pin each artifact)."""
        return redact_paths(json_safe({**self.card, "serving": dict(self.serving)}))

    @torch.inference_mode()
    def predict_proba(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw pixels ``(N, C, H, W)`` -> probabilities ``(N, K)`` float32 (rows sum to 1)."""
        x = normalize(x_raw, self.card["normalization"])  # (N, C, H, W)
        logits = self.model(torch.from_numpy(x))  # (N, K)
        return torch.softmax(logits.float(), dim=1).numpy()

    def format_predictions(self, probs: np.ndarray, top_k: int | None = None) -> list[dict[str, Any]]:
        """One ``{"label", "class_name", "probabilities"[, "top_k"]}`` per row of ``probs`` ``(N, K)``."""
        labels = probs.argmax(axis=1)  # (N,)
        names = self.class_names
        out = [{"label": int(k), "class_name": names[k], "probabilities": row}
               for k, row in zip(labels.tolist(), probs.tolist())]
        if top_k:
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]  # (N, top_k)
            for item, idx, row in zip(out, order.tolist(), probs.tolist()):
                item["top_k"] = [{"label": j, "class_name": names[j], "probability": row[j]} for j in idx]
        return out


def load_servable(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_artifact` (sha256 verified, ``weights_only``, card checked) of an artifact that can
    answer raw pixels: its card must say how to normalize them (``normalization``, which every stage
    writes); a hand-made card without it is refused here, not at the first request."""
    model, card = load_artifact(path)
    if "normalization" not in card:
        raise ArtifactError(f"model card {path} has no 'normalization' (per-channel mean and std of the raw "
                            "pixels it was trained on): it cannot be served on raw inputs")
    return model, card


def _version_of(ref: str, path: Path) -> str:
    """The artifact directory's name (``student-<UTC time>-<hex>``): unique per training run."""
    return Path(ref.rstrip("/")).name if is_remote_uri(ref) else path.name
