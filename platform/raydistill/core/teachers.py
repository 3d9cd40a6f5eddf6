"""The teachers a distill stage or a sweep reads: ``distill.teachers`` or the single
``distill.teacher`` (``latest:teacher`` by default), resolved, sha256-verified and checked against
the data set. No Ray: preflight runs it before Ray starts, the stages again when they load them."""
from __future__ import annotations

from pathlib import Path

from .artifacts import ArtifactError, check_fits, load_state, resolve_artifact
from .config import Config, TeacherRef
from .data import DataBundle


def teacher_refs(cfg: Config) -> list[TeacherRef]:
    """The teachers to distill from: ``distill.teachers`` or the single ``distill.teacher``."""
    return list(cfg.distill.teachers) or [TeacherRef(artifact=cfg.distill.teacher or "latest:teacher", weight=1.0)]


def load_teachers(cfg: Config, bundle: DataBundle) -> list[tuple[Path, dict, dict, float]]:
    """``(path, card, state, weight)`` per teacher, verified and checked against the data set.

    Teachers are compared with the first one before the data set, so that an ensemble whose
    members disagree on the class list gets an error naming both artifacts.
    """
    loaded = []
    for ref in teacher_refs(cfg):
        path = resolve_artifact(ref.artifact, cfg.storage_dir())
        state, card = load_state(path)
        if loaded and card["class_names"] != loaded[0][1]["class_names"]:
            first_path, first_card = loaded[0][0], loaded[0][1]
            raise ArtifactError(f"teachers {first_path} and {path} have different class lists "
                                f"({first_card['class_names']} vs {card['class_names']}); "
                                f"an ensemble's teachers must share one class list")
        check_fits(card, bundle, what=f"teacher {path}")
        loaded.append((path, card, state, ref.weight))
    return loaded
