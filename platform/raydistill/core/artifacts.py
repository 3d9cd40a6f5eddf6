"""Artifacts: a directory holding ``weights.pt`` (a state dict) and ``model.json`` (the model card).

Writes are atomic (a temp dir renamed into place), so a crash never leaves a half artifact that
looks whole. Loading verifies the weights' sha256 against the card and uses
``torch.load(weights_only=True)``, which never executes pickled code.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import platform as _platform
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .cards import card_problem
from .files import fsync_tree, os_reason, out_of_space, remove_stale_temps, swap_in, write_json_atomic
from .models import build_model, count_parameters

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
CHOSEN_FILE = "CHOSEN"


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or tampered with; the message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of what made the artifact; read from package metadata, so Ray is never imported."""
    from importlib import metadata

    import numpy

    from .version import __version__

    versions = {"python": _platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        versions["ray"] = metadata.version("ray")
    except metadata.PackageNotFoundError:  # pragma: no cover - ray is a dependency
        pass
    versions["raydistill"] = __version__
    return versions


def artifacts_root(storage_dir: Path | str) -> Path:
    return Path(storage_dir) / "artifacts"


def stamped_name(prefix: str) -> str:
    """``<prefix>-<UTC time>-<4 hex>``: sortable by time and unique; every run dir is named so."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:4]}"


ARTIFACT_KINDS = ("teacher", "student", "baseline", "federated")  # what the stages write


def _check_kind(kind: str) -> str:
    if kind not in ARTIFACT_KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}; known: {', '.join(ARTIFACT_KINDS)} "
                            f"(e.g. latest:student)")
    return kind


def new_artifact_path(storage_dir: Path | str, kind: str) -> Path:
    """``<storage>/artifacts/<kind>/<kind>-<UTC time>-<4 hex>``: sortable and unique."""
    return artifacts_root(storage_dir) / _check_kind(kind) / stamped_name(kind)


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
            and not bool(torch.isfinite(v).all())]


def _refuse_non_finite(state: dict[str, torch.Tensor], what: str) -> None:
    bad = non_finite_tensors(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ArtifactError(f"{what} has NaN or infinite weights in {', '.join(bad[:3])}{more}: training "
                            f"diverged (try a lower lr, or grad_clip); a broken model is never saved or loaded")


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON ``null``), recursively: cards
    must stay strict JSON (a NaN loss of a failed round would make every reader choke)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_artifact(path: Path | str, model: nn.Module | dict[str, torch.Tensor], card: dict[str, Any]) -> Path:
    """Write weights + card to ``path`` atomically; returns ``path``.

    ``card`` must hold ``architecture`` (``{"name", "args"}``), ``input_shape`` and
    ``class_names``; this adds ``weights_sha256``, ``parameters``, ``versions``, ``created``.
    Weights with a NaN or an infinity are refused before anything is written (ArtifactError);
    non-finite numbers in the card are stored as ``null``.
    """
    path = Path(path)
    for key in ("architecture", "input_shape", "class_names"):
        if key not in card:
            raise ArtifactError(f"model card for {path} lacks '{key}'")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _refuse_non_finite(state, f"the model for {path.name}")
    for key in ("test_accuracy", "test_loss"):
        value = (card.get("metrics") or {}).get(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ArtifactError(f"the {card.get('kind', 'model')} for {path.name} has {key}={value}: it predicts "
                                f"NaN or infinity on the test split, so it is not saved")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        # serialized in memory, written by Python: torch's own file writer hides a full disk's errno
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            f.write(buffer.getbuffer())
        full = dict(card)
        full["weights_sha256"] = hashlib.sha256(buffer.getbuffer()).hexdigest()
        full["parameters"] = int(sum(v.numel() for k, v in state.items() if _is_parameter_key(k, state)))
        full.setdefault("versions", library_versions())
        full.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        full["path"] = str(path)
        (tmp / CARD_FILE).write_text(json.dumps(json_safe(full), indent=2, allow_nan=False))
        fsync_tree(tmp)
        swap_in(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if out_of_space(exc):
            raise ArtifactError(f"no room to save the {card.get('kind', 'model')} at {path} ({os_reason(exc)}); nothing "
                                f"was saved: free space there or set run.storage_path to another disk") from exc
        raise
    remove_stale_temps(path.parent)
    return path


def _is_parameter_key(key: str, state: dict) -> bool:
    """Exclude BatchNorm running stats and counters from the parameter count."""
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def load_card(path: Path | str) -> dict[str, Any]:
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise ArtifactError(f"not an artifact: {card_path} is missing")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"model card {card_path} is not valid JSON: {exc}") from exc
    problem = card_problem(card)
    if problem:
        raise ArtifactError(f"model card {card_path} is damaged: {problem}")
    return card


def load_state(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verified state dict and card of the artifact at ``path``."""
    path = Path(path)
    card = load_card(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"artifact {path} has no {WEIGHTS_FILE}")
    data = weights.read_bytes()  # read once: the bytes that were hashed are the bytes loaded
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.get("weights_sha256"):
        raise ArtifactError(f"sha256 mismatch for {weights}: card says {card.get('weights_sha256')}, "
                            f"file has {actual}; the artifact is corrupted or was tampered with")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or not a torch file
        raise ArtifactError(f"cannot read {weights}: {exc}") from exc
    if not (isinstance(state, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise ArtifactError(f"{weights} holds a {type(state).__name__}, not a state dict of named tensors")
    _refuse_non_finite(state, f"artifact {path}")
    return state, card


def build_from_card(card: dict[str, Any]) -> nn.Module:
    """The card's architecture, freshly initialized; an unknown model or arguments it does not take
    are an ArtifactError naming them (a card from another raydistill version, or edited by hand)."""
    arch = card["architecture"]
    try:
        return build_model(arch["name"], card["input_shape"], len(card["class_names"]), arch.get("args"))
    except (KeyError, TypeError, ValueError) as exc:  # UnknownNameError is a KeyError
        raise ArtifactError(f"cannot build the card's architecture {arch}: {exc}") from exc


def model_from_state(card: dict[str, Any], state: dict) -> nn.Module:
    """The card's architecture with ``state`` loaded (tensors or numpy arrays), in eval mode."""
    model = build_from_card(card)
    # numpy arrays from the object store are read-only: copy them (load_state_dict copies anyway)
    model.load_state_dict({k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval()


def check_fits(card: dict[str, Any], bundle, *, what: str) -> None:
    """Raise ArtifactError unless the artifact ``what`` (e.g. ``"teacher <path>"``) was trained for the
    class list and input shape of data bundle ``bundle``; the message names both."""
    if card["class_names"] != list(bundle.class_names) or list(card["input_shape"]) != list(bundle.input_shape):
        raise ArtifactError(f"{what} was trained for classes {card['class_names']} and input {card['input_shape']}, "
                            f"but data set '{bundle.name}' has {bundle.class_names} and {list(bundle.input_shape)}")


def load_artifact(path: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Model (eval mode, CPU) and card; raises ArtifactError on any mismatch."""
    state, card = load_state(path)
    model = build_from_card(card)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"weights in {path} do not fit architecture {card['architecture']}: {exc}") from exc
    model.eval()
    if count_parameters(model) <= 0:  # pragma: no cover - defensive
        raise ArtifactError(f"artifact {path} has an empty model")
    return model, card


def list_artifacts(storage_dir: Path | str, kind: str) -> list[Path]:
    """Complete artifacts of ``kind``, oldest first (names sort by time)."""
    folder = artifacts_root(storage_dir) / kind
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and (p / CARD_FILE).is_file())


def mark_chosen(path: Path | str, storage_dir: Path | str) -> None:
    """Record ``path`` as the chosen student (what ``serve`` deploys by default)."""
    root = artifacts_root(storage_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / CHOSEN_FILE, {"path": str(Path(path).resolve())})


def _chosen_path(pointer: Path) -> Path:
    """The path recorded in a CHOSEN pointer file; an empty or damaged pointer is an ArtifactError."""
    try:
        recorded = json.loads(pointer.read_text())["path"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"the chosen-student pointer {pointer} is damaged ({type(exc).__name__}); "
                            f"run distill again, or serve an artifact by path") from None
    if not isinstance(recorded, str) or not recorded:
        raise ArtifactError(f"the chosen-student pointer {pointer} names no artifact; run distill again")
    return Path(recorded)


def resolve_artifact(ref: str, storage_dir: Path | str) -> Path:
    """``"chosen"`` -> the chosen student; ``"latest:<kind>"`` -> newest of that kind;
    anything else is a path."""
    if ref == "chosen":
        pointer = artifacts_root(storage_dir) / CHOSEN_FILE
        if not pointer.is_file():
            raise ArtifactError(f"no chosen student yet: {pointer} is missing (run tune or distill first)")
        return _chosen_path(pointer)
    if ref.startswith("latest:"):
        kind = _check_kind(ref.split(":", 1)[1])
        found = list_artifacts(storage_dir, kind)
        if not found:
            raise ArtifactError(f"no '{kind}' artifact under {artifacts_root(storage_dir) / kind}")
        return found[-1]
    path = Path(ref).expanduser()
    if not (path / CARD_FILE).is_file():
        raise ArtifactError(f"not an artifact: {path / CARD_FILE} is missing")
    return path
