"""One console line per finished trial with the best score so far, instead of Tune's status tables
(which filled ~200 lines of a digits demo). Runs on the driver from the results Tune already has."""
from __future__ import annotations

import logging

from ray import tune

from raydistill.core.progress import Progress, log_progress

logger = logging.getLogger(__name__)


def better(score: float | None, best: float | None, mode: str) -> float | None:
    """The better of ``score`` and ``best`` (``mode`` = max | min); None counts as no score."""
    if score is None:
        return best
    if best is None:
        return score
    return max(score, best) if mode == "max" else min(score, best)


def trial_line(done: int, total: int, trial_id: str, config: dict, metric: str, score: float | None,
               best: float | None) -> str:
    """``tune: trial 3/8 a1b2c_00002 T=4.02 alpha=0.311 val_accuracy=0.9653 (best 0.9722)``."""
    lr = f" lr={config['lr']:.2e}" if "lr" in config else ""
    lr += f" method={config['method']}" if "method" in config else ""
    shown = "-" if score is None else f"{score:.4f}"
    tail = "" if best is None else f" (best {best:.4f})"
    return (f"tune: trial {done}/{total} {trial_id} T={config['temperature']:.3g} alpha={config['alpha']:.3g}{lr} "
            f"{metric}={shown}{tail}")


class TrialProgress(tune.Callback):
    """Logs :func:`trial_line` as each trial finishes (ASHA-stopped ones too) and a warning per failed trial."""

    def __init__(self, total: int, metric: str, mode: str):
        self.total, self.metric, self.mode = total, metric, mode
        self.done, self.best = 0, None

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        score = (trial.last_result or {}).get(self.metric)
        self.best = better(score, self.best, self.mode)
        postfix = {} if self.best is None else {"best": f"{self.best:.4f}"}
        log_progress(logger, Progress("tune", self.done, self.total, postfix),
                     trial_line(self.done, self.total, trial.trial_id, trial.config, self.metric, score, self.best))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        logger.warning(f"tune: trial {self.done}/{self.total} {trial.trial_id} failed (its error is in results.csv)")


def progress_callbacks(cfg) -> list:
    """``[TrialProgress]`` for a sweep of ``cfg`` unless ``run.quiet``; Tune's own tables stay off."""
    from raydistill.tuning.space import expected_trials

    return [] if cfg.run.quiet else [TrialProgress(expected_trials(cfg), cfg.tune.metric, cfg.tune.mode)]
