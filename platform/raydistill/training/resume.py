"""Where a restarted worker or trial resumes: the newest checkpoint it has *persisted*, not only
the one Ray has registered; and what ``raydistill teacher|distill --resume <run>`` needs to go on
with a run whose driver died (:func:`record_run`, :func:`resumed_run`).

Ray registers a reported checkpoint after persisting it (Train v2: the controller polls the
workers' results; Tune: a result, then a ``save`` future). A worker that dies between the two
restarts from the older registered checkpoint — or from epoch 0 — although the newer one is
already on storage, and runs those epochs again. Both the Train path
(:func:`raydistill.training.worker.train_loop_per_worker`) and Tune trials
(:func:`raydistill.tuning.trial.resume_state`) therefore take the newest of the two.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

from raydistill.core.config import Config, ConfigError, config_from_dict
from raydistill.core.files import write_json_atomic
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


# --- a run whose driver died -----------------------------------------------------------------------

RUN_FILE = "raydistill_run.json"  # in <storage>/ray_results/<run>, written before the first epoch
COMMANDS = {"teacher": "teacher", "student": "distill", "baseline": "baseline"}  # stage -> command


@dataclasses.dataclass(frozen=True)
class ResumedRun:
    """A recorded run to go on with: its own config, Ray Train run name, seed and where it trained."""

    cfg: Config
    run_name: str
    seed: int
    in_process: bool


def record_run(run_dir: Path, *, stage: str, seed: int, in_process: bool, cfg: Config) -> None:
    """Write what ``--resume`` needs into ``run_dir``: the stage, seed, placement and the whole config
    (teachers pinned to their paths by the caller, so ``latest:teacher`` cannot move under a resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / RUN_FILE, {"stage": stage, "seed": seed, "in_process": in_process,
                                           "config": cfg.to_dict()})


def resumed_run(current: Config, run_dir: str | Path, *, stage: str) -> ResumedRun:
    """The run recorded in ``run_dir`` (``<storage>/ray_results/<run>``), checked to be a ``stage`` run.

    Its settings are fixed; ``run.address``/``quiet``/``verbose`` come from ``current``, and the
    storage is where the run dir is (a relative ``run.storage_path`` may have meant another cwd).
    Training then starts from the newest checkpoint in the run dir: at most the epoch that was
    running when the driver died is lost (``checkpoint_every: 1``, the default)."""
    path = Path(run_dir).expanduser().resolve()
    record = path / RUN_FILE
    if not record.is_file():
        raise ConfigError(f"--resume: {path} is not a raydistill training run ({RUN_FILE} is missing); pass "
                          "the run's folder, <storage>/ray_results/<stage>-<time>-<id>")
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise TypeError(f"a JSON {type(saved).__name__}, not an object")
        cfg = config_from_dict(saved["config"])
        seed, in_process = int(saved["seed"]), bool(saved["in_process"])
    except KeyError as exc:
        raise ConfigError(f"--resume: {record} is unreadable (no {exc} entry)") from exc
    except (OSError, ValueError, TypeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ConfigError(f"--resume: {record} is unreadable ({exc})") from exc
    if saved.get("stage") != stage:
        raise ConfigError(f"--resume: {path.name} is a {saved.get('stage')} run; resume it with "
                          f"`raydistill {COMMANDS.get(saved.get('stage'), '?')} --resume {path}`")
    run = dataclasses.replace(cfg.run, address=current.run.address, quiet=current.run.quiet,
                              verbose=current.run.verbose, storage_path=str(path.parent.parent))
    return ResumedRun(dataclasses.replace(cfg, run=run), path.name, seed, in_process)
