"""Per-round checkpoints of a federated run, so a run whose driver died goes on from its last
finished round (``raydistill federated --resume <run dir>``). No Ray, no pickle.

After every finished round ``r`` the server writes ``<run dir>/checkpoint/``: ``state.npz`` (the
global model after round r, one float array per parameter, read back with ``allow_pickle=False``)
and ``records.json`` (rounds 0..r as in ``rounds.csv``, with their card details). The folder is
written under a temporary name and swapped in (``core.files.swap_in``), so at every instant it holds
a complete round. Nothing else needs saving: client sampling, client seeds and injected faults are
functions of (``run.seed``, round, client id), and the strategies keep no state between rounds.
A resumed run therefore loses at most the round that was running when the driver died.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from raydistill.core.config.rules import ConfigError
from raydistill.core.files import fsync_tree, swap_in
from raydistill.federated.aggregate import state_problem
from raydistill.federated.rounds import RoundRecord

CHECKPOINT_DIR, STATE_FILE, RECORDS_FILE = "checkpoint", "state.npz", "records.json"
CONFIG_FILE = "config.yaml"  # the run's config, written when the run starts (resume reads it back)


def save_round(run_dir: Path, state: dict[str, np.ndarray], records: list[RoundRecord]) -> Path:
    """Write ``state`` (after round ``records[-1].round``) and ``records`` as the run's checkpoint."""
    final = Path(run_dir) / CHECKPOINT_DIR
    partial = final.with_name(f".{CHECKPOINT_DIR}.{uuid.uuid4().hex}.tmp")
    partial.mkdir()
    with open(partial / STATE_FILE, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in state.items()})
    rows = [{**asdict(r), "test_accuracy": _finite_or_none(r.test_accuracy),
             "test_loss": _finite_or_none(r.test_loss)} for r in records]
    (partial / RECORDS_FILE).write_text(json.dumps(rows, default=_plain))
    fsync_tree(partial)
    swap_in(partial, final)
    return final


def load_round(run_dir: Path, like: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[RoundRecord]]:
    """The global state and the records of the run's last checkpointed round.

    Raises ``ConfigError`` naming the folder when there is no complete checkpoint to resume from, or
    when its state is not the run's model: other parameter names or shapes than ``like`` (a fresh
    model's state) or a NaN/inf value — a broken state is never trained on or saved."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not (folder / STATE_FILE).is_file() or not (folder / RECORDS_FILE).is_file():
        raise ConfigError(f"--resume: {run_dir} holds no round checkpoint ({CHECKPOINT_DIR}/{STATE_FILE} and "
                          f"{RECORDS_FILE}); it is not a federated run dir, or it died before round 0 was saved")
    try:
        with np.load(folder / STATE_FILE, allow_pickle=False) as npz:
            state = {k: npz[k].copy() for k in npz.files}
        names = {f.name for f in fields(RoundRecord)}
        records = [RoundRecord(**{k: _nan_if_none(k, v) for k, v in row.items() if k in names})
                   for row in json.loads((folder / RECORDS_FILE).read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--resume: the checkpoint in {folder} is unreadable ({exc})") from exc
    if not records:
        raise ConfigError(f"--resume: the checkpoint in {folder} records no round")
    problem = state_problem(state, like)
    if problem:
        raise ConfigError(f"--resume: the checkpoint in {folder} is not this run's model: {problem}")
    return state, records


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _nan_if_none(key: str, value):
    return float("nan") if value is None and key in ("test_accuracy", "test_loss") else value


def _plain(value):
    """JSON for numpy scalars in the records' details."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
