"""The teachers a distill stage or a sweep reads: ``distill.teachers`` or the single
``distill.teacher`` (``latest:teacher`` by default), resolved and checked against the data set. No
Ray: preflight checks their cards before Ray starts (:func:`teacher_cards`, no weights read); the
stage reads and sha256-verifies the weights once, when it loads them (:func:`load_teachers`)."""
from __future__ import annotations

from pathlib import Path

from .artifacts import ArtifactError, check_fits, load_card, load_state, resolve_artifact
from .config import Config, TeacherRef
from .data import DataBundle


def teacher_refs(cfg: Config) -> list[TeacherRef]:
    """The teachers to distill from: ``distill.teachers`` or the single ``distill.teacher``."""
    return list(cfg.distill.teachers) or [TeacherRef(artifact=cfg.distill.teacher or "latest:teacher", weight=1.0)]


def teacher_cards(cfg: Config, bundle: DataBundle) -> list[tuple[Path, dict, float]]:
    """``(path, card, weight)`` per teacher: resolved, card checked, fitting the data set.

    Teachers are compared with the first one before the data set, so that an ensemble whose
    members disagree on the class list gets an error naming both artifacts.
    """
    found = []
    for ref in teacher_refs(cfg):
        path = resolve_artifact(ref.artifact, cfg.storage_dir())
        card = load_card(path)
        if found and card["class_names"] != found[0][1]["class_names"]:
            first_path, first_card = found[0][0], found[0][1]
            raise ArtifactError(f"teachers {first_path} and {path} have different class lists "
                                f"({first_card['class_names']} vs {card['class_names']}); "
                                f"an ensemble's teachers must share one class list")
        check_fits(card, bundle, what=f"teacher {path}")
        found.append((path, card, ref.weight))
    return found


def load_teachers(cfg: Config, bundle: DataBundle) -> list[tuple[Path, dict, dict, float]]:
    """``(path, card, state, weight)`` per teacher of :func:`teacher_cards`, weights sha256-verified."""
    loaded = []
    for path, _, weight in teacher_cards(cfg, bundle):
        state, card = load_state(path)
        loaded.append((path, card, state, weight))
    return loaded
