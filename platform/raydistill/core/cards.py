"""Model cards: what an artifact says about itself (the README's "The flow" and "Code map" describe the fields)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .data import DataBundle
from .methods import HINT_KNOBS, TERM_WEIGHTS, parse_method


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


def method_record(d: Any, method: str) -> dict:
    """``method`` and the knobs of the ``distill`` section ``d`` it reads: DKD's and DIST's term weights,
    FitNets' hint weight and layers (federated runs record their ``federated.method`` with it)."""
    parsed = parse_method(method)
    knobs = (*TERM_WEIGHTS.get(parsed.base, ()), *(HINT_KNOBS if parsed.hint else ()))
    return {"method": method, **{name: getattr(d, name) for name in knobs}}


def distillation_record(d: Any) -> dict:
    """The card's ``distillation`` section for a ``distill`` config section ``d``: T, alpha, mode, the
    method, and DKD's weights and warm-up (DIST's weights; FitNets' hint weight and layers) when the
    method uses them, and the view cache's size when there is one."""
    record = {"temperature": d.temperature, "alpha": d.alpha, "mode": d.mode, **method_record(d, d.method)}
    if d.method.startswith("dkd"):
        record.update(dkd_warmup_epochs=d.dkd_warmup_epochs)
    if d.mode == "cached" and d.cached_views > 0:  # the view cache (core.views); cache_topk 0 = auto
        record.update(cached_views=d.cached_views, cache_topk=d.cache_topk)
    return record


def _numbers(values: Any, n: int) -> bool:
    """Whether ``values`` is a list of ``n`` finite ints/floats (booleans are not numbers)."""
    return (isinstance(values, list) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def card_problem(card: Any) -> str | None:
    """What is wrong with a card read from disk, or None: the fields every reader relies on —
    ``architecture`` ``{"name": str, "args": {...}}``, ``input_shape`` ``[C, H, W]`` (positive ints),
    ``class_names`` (non-empty list of str) and, when present (every stage writes it; serving needs
    it), ``normalization`` ``{"mean": [C numbers], "std": [C numbers > 0]}``. Checked before anything
    is built from it, so a damaged card is one clear error, not a KeyError in a replica after Ray has
    started."""
    if not isinstance(card, dict):
        return f"expected a JSON object, got a JSON {type(card).__name__}"
    arch = card.get("architecture")
    args_ok = isinstance(arch, dict) and isinstance(arch.get("args", {}), (dict, type(None)))
    if not (args_ok and isinstance(arch.get("name"), str)):
        return f"'architecture' must be {{\"name\": <model>, \"args\": {{...}}}}, got {arch!r:.80}"
    shape = card.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        return f"'input_shape' must be 3 positive integers [C, H, W], got {shape!r:.80}"
    names = card.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        return f"'class_names' must be a non-empty list of strings, got {names!r:.80}"
    norm, channels = card.get("normalization"), shape[0]
    norm_ok = (isinstance(norm, dict) and _numbers(norm.get("mean"), channels) and _numbers(norm.get("std"), channels)
               and all(s > 0 for s in norm["std"]))
    if "normalization" in card and not norm_ok:
        return (f"'normalization' must be {{\"mean\": [{channels} numbers], \"std\": [{channels} numbers > 0]}}, "
                f"got {norm!r:.80}")
    return None
