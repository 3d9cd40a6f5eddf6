"""Where a restarted worker or trial resumes: the newest checkpoint it has *persisted*, not only
the one Ray has registered.

Ray registers a reported checkpoint after persisting it (Train v2: the controller polls the
workers' results; Tune: a result, then a ``save`` future). A worker that dies between the two
restarts from the older registered checkpoint — or from epoch 0 — although the newer one is
already on storage, and runs those epochs again. Both the Train path
(:func:`raydistill.training.worker.train_loop_per_worker`) and Tune trials
(:func:`raydistill.tuning.trial.resume_state`) therefore take the newest of the two.
"""
from __future__ import annotations

import logging
import re

from raydistill.core.loop import TrainState, state_from_checkpoint

logger = logging.getLogger(__name__)

# Tune: checkpoint_000003; Train v2: checkpoint_2026-12-02_08-10-11.123456 — both sort by time
_CHECKPOINT_DIR = re.compile(r"checkpoint_[0-9][0-9_.-]*")


def newest_of(*states: TrainState | None) -> TrainState | None:
    """The state with the highest epoch among those given (None when all are None)."""
    return max((s for s in states if s is not None), key=lambda s: s.epoch, default=None)


def newest_persisted_state(storage) -> TrainState | None:
    """The newest ``checkpoint_*`` directory under a Ray storage context's run (Train) or trial
    (Tune) path that loads; a partly written one is skipped with a warning. None without storage."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    if storage is None:
        return None
    fs = storage.storage_filesystem
    path = getattr(storage, "trial_fs_path", None) or storage.experiment_fs_path
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    dirs = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                   and _CHECKPOINT_DIR.fullmatch(i.base_name)), reverse=True)
    for found in dirs:
        try:
            return state_from_checkpoint(Checkpoint(found, filesystem=fs))
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint falls back to an older one
            logger.warning("checkpoint %s is unreadable (%s); trying an older one", found, exc)
    return None
