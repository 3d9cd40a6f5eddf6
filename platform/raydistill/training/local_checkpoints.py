"""The checkpoints a stage keeps on local disk when it trains in process (``in_process``) or asks
for its own copy (``worker``): ``run_dir/checkpoint_<epoch>``, the newest :data:`KEEP`, each written
whole before it can be seen. Ray-free; its own module so ``in_process`` (which runs ``worker``'s
train loop) and ``worker`` (which keeps these) do not import each other.
"""
from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from raydistill.core.files import swap_in
from raydistill.core.loop import STATE_FILE, TrainState, load_train_state, save_train_state

KEEP = 2  # checkpoints kept per run, as the worker-group path's CheckpointConfig(num_to_keep=2)
_NAME = re.compile(r"checkpoint_(\d+)")


def keep_checkpoint(state: TrainState, run_dir: Path) -> Path:
    """Write ``state`` as ``run_dir/checkpoint_<state.epoch>`` (atomically: temp dir, then rename),
    drop all but the newest :data:`KEEP`; returns the new directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint_{state.epoch:06d}"
    partial = run_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    partial.mkdir()
    save_train_state(state, partial / STATE_FILE)
    swap_in(partial, final)  # the artifacts' mechanism: a complete checkpoint at every instant
    for old in checkpoints(run_dir)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Kept checkpoint directories of a run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)))


def newest_state(run_dir: Path) -> TrainState | None:
    """The state in the newest kept checkpoint of ``run_dir``, or None when it has none."""
    kept = checkpoints(run_dir)
    return load_train_state(kept[-1] / STATE_FILE) if kept else None
