"""What goes into MLflow, as plain data: the config flattened to params, a model card's history as
per-step metrics, its final metrics and tags, a sweep row as a trial's params and tags. No mlflow
import, so the mapping is read (and tested) without a store.

A metric is a ``(key, value, step)`` triple: the step is the epoch (training) or round (federated).
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

Metric = tuple[str, float, int]

# Config sections logged as a stage's params (None = the whole tree): what that stage reads.
STAGE_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "teacher": ("run", "data", "teacher"), "distill": ("run", "data", "distill"),
    "baseline": ("run", "data", "distill"), "tune": ("run", "data", "distill", "tune"),
    "federated": ("run", "data", "federated"), "pipeline": None,
}
STEP_KEYS = ("epoch", "round")  # the history row's step; the first present wins
TRIAL_METRICS = ("train_loss", "val_loss", "val_accuracy", "lr", "epoch_time_s")  # core.loop's per-epoch keys
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"distill": {"student": {"args": {"hidden": [32]}}}}`` -> ``{"distill.student.args.hidden": "[32]"}``.
    Values are JSON text (``true``, ``[32]``, ``0.001``) except strings, which stay as they are."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


def config_params(cfg, kind: str) -> dict[str, str]:
    """The config sections stage ``kind`` reads, flattened to dotted keys (``distill.temperature``)."""
    tree = cfg.to_dict()
    sections = STAGE_SECTIONS.get(kind)
    return flatten(tree if sections is None else {s: tree[s] for s in sections})


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool (None, NaN and text are not logged as metrics)."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and float(value) == float(value) and abs(float(value)) != float("inf"))


def series(history: Iterable[Mapping[str, Any]], keys: Sequence[str] | None = None) -> list[Metric]:
    """One metric per number in each history row, at that row's epoch (or round); ``keys`` limits
    which columns count. Rows without a step are skipped."""
    out: list[Metric] = []
    for row in history:
        step_key = next((k for k in STEP_KEYS if is_number(row.get(k))), None)
        if step_key is None:
            continue
        step = int(row[step_key])
        out += [(k, float(v), step) for k, v in row.items()
                if k not in STEP_KEYS and (keys is None or k in keys) and is_number(v)]
    return out


def final_metrics(metrics: Mapping[str, Any], taken: Iterable[str]) -> list[Metric]:
    """The card's final numbers (``test_accuracy``, ``test_loss``, ...) at step 0; one whose name is
    already a per-step series (a federated run's ``test_accuracy`` per round) becomes ``final_<name>``."""
    taken = set(taken)
    return [(f"final_{k}" if k in taken else k, float(v), 0) for k, v in metrics.items()
            if k != "history" and is_number(v)]


def card_metrics(card: Mapping[str, Any]) -> list[Metric]:
    """Per-epoch (or per-round) history and final metrics of an artifact's model card."""
    steps = series(card.get("metrics", {}).get("history") or [])
    return steps + final_metrics(card.get("metrics", {}), {k for k, _, _ in steps})


def _parent_shas(card: Mapping[str, Any], kind: str | None = None) -> str:
    return ",".join(p["sha256"] for p in card.get("parents") or []
                    if p.get("sha256") and (kind is None or p.get("kind") == kind))


def artifact_tags(card: Mapping[str, Any], path: Path | str) -> dict[str, str]:
    """Where the artifact is and the sha256 that pins it (and its parents')."""
    tags = {"artifact_path": str(Path(path).resolve()), "weights_sha256": str(card["weights_sha256"]),
            "artifact_kind": str(card.get("kind", "")), "model": str(card.get("name", ""))}
    parents = _parent_shas(card)
    return {**tags, "parents_sha256": parents} if parents else tags


def lineage_tags(card: Mapping[str, Any], path: Path | str, **extra: Any) -> dict[str, str]:
    """Tags of a registered model version: the weights' sha256, the teacher(s) it was distilled from,
    and the sweep and trial that chose its settings (the card's ``tune`` section, or ``extra``)."""
    tune = card.get("tune") or {}
    tags = {"weights_sha256": str(card["weights_sha256"]), "artifact_path": str(Path(path).resolve()),
            "teacher_sha256": _parent_shas(card, "teacher"), "sweep": str(tune.get("sweep", "")),
            "trial": str(tune.get("trial_id", ""))}
    tags.update({k: str(v) for k, v in extra.items() if v not in (None, "")})
    return {k: v for k, v in tags.items() if v}


def trial_params(row: Mapping[str, Any]) -> dict[str, str]:
    """A sweep row's searched point: T, alpha and the learning rate."""
    return {k: json.dumps(float(row[k])) for k in ("temperature", "alpha", "lr")}


def trial_tags(row: Mapping[str, Any]) -> dict[str, str]:
    tags = {"trial_id": str(row["trial_id"]), "status": str(row["status"]),
            "early_stopped": json.dumps(bool(row.get("early_stopped"))), "chosen": json.dumps(bool(row.get("chosen")))}
    return {**tags, "error": str(row["error"])[:5000]} if row.get("error") else tags


def trial_metrics(history: Any) -> list[Metric]:
    """A trial's curve (one metric per epoch and column of :data:`TRIAL_METRICS`) from its per-epoch
    table (a DataFrame or a list of dicts); Tune's bookkeeping columns are left out."""
    rows = history.to_dict("records") if hasattr(history, "to_dict") else list(history or [])
    return series(rows, TRIAL_METRICS)


TUNE_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}  # anything else (PENDING, RUNNING, PAUSED): KILLED


def trial_status(row: Mapping[str, Any]) -> str:
    """The MLflow run status of a Tune trial status."""
    return TUNE_STATUS.get(str(row["status"]), "KILLED")
