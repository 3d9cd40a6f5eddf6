"""Model cards: what an artifact says about itself (the README's "The flow" and "Code map" describe the fields)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import DataBundle


def parent_entry(path: Path | str, card: dict, **extra: Any) -> dict:
    """A parent reference: where it is, what it is, and the sha256 that pins it."""
    return {"path": str(path), "kind": card.get("kind"), "sha256": card.get("weights_sha256"), **extra}


def build_card(*, kind: str, model_name: str, model_args: dict, bundle: DataBundle, seed: int,
               metrics: dict, parents: list[dict] | None = None, **extra: Any) -> dict:
    """The model card of a new artifact; ``extra`` adds stage-specific sections."""
    return {
        "kind": kind,
        "name": f"{bundle.name}-{kind}-{model_name}",
        "architecture": {"name": model_name, "args": dict(model_args)},
        "input_shape": list(bundle.input_shape),
        "class_names": list(bundle.class_names),
        "normalization": bundle.normalization,
        "dataset": {**bundle.describe(), "split_seed": seed},
        "metrics": metrics,
        "parents": parents or [],
        **extra,
    }


def distillation_record(d: Any) -> dict:
    """The card's ``distillation`` section for a ``distill`` config section ``d``: T, alpha, mode, the
    method, and DKD's weights and warm-up (FitNets' hint weight and layers) when the method uses them, and the view cache's
    size when there is one."""
    record = {"temperature": d.temperature, "alpha": d.alpha, "mode": d.mode, "method": d.method}
    if d.method.startswith("dkd"):
        record.update(dkd_alpha=d.dkd_alpha, dkd_beta=d.dkd_beta, dkd_warmup_epochs=d.dkd_warmup_epochs)
    if d.method == "fitnet":
        record.update(hint_weight=d.hint_weight, hint_layer=d.hint_layer, guided_layer=d.guided_layer)
    if d.mode == "cached" and d.cached_views > 0:  # the view cache (core.views); cache_topk 0 = auto
        record.update(cached_views=d.cached_views, cache_topk=d.cache_topk)
    return record
