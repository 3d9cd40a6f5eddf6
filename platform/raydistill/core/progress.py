"""Progress events. The library logs each step of a long task (an epoch, a trial, a round) with a
:class:`Progress` attached (``extra={"progress": ...}``); the console decides how it looks: a live
bar when stdout is a terminal, otherwise only the milestone lines (:func:`worth_a_line`). No Ray.

The record carries the progress as a plain JSON dict, not the object: every handler sees it, and
Ray Train's workers attach a JSON file handler to the root logger (``ray._common.formatters.
JSONFormatter``, ``json.dumps`` of the record's extras) that would otherwise print a
"--- Logging error ---" traceback for each epoch line."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

RECORD_KEY = "progress"


def worth_a_line(done: int, total: int, parts: int = 10) -> bool:
    """Whether step ``done`` (1-based) of ``total`` gets a plain console line: the first, the last, and
    each one that crosses another ``1/parts`` of the task (``floor(parts * d / T)`` grows), so a
    60-epoch stage prints 11 lines and a 10-epoch one every epoch."""
    return done in (1, total) or (parts * done) // total > (parts * (done - 1)) // total


@dataclass(frozen=True)
class Progress:
    """Step ``done`` of ``total`` of ``task`` (``"teacher"``, ``"tune"``, ...) and what to show beside it."""

    task: str
    done: int
    total: int
    postfix: dict = field(default_factory=dict)

    @property
    def milestone(self) -> bool:
        return worth_a_line(self.done, self.total)

    def as_record(self) -> dict:
        """``{"task", "done", "total", "postfix"}`` with JSON types only (postfix values that are not
        ``str``/``int``/``float``/``bool``/``None`` become their ``str``)."""
        plain = (str, int, float, bool, type(None))
        postfix = {str(k): v if isinstance(v, plain) else str(v) for k, v in self.postfix.items()}
        return {"task": self.task, "done": int(self.done), "total": int(self.total), "postfix": postfix}

    @classmethod
    def of(cls, record: logging.LogRecord) -> Progress | None:
        """The progress a record carries (:func:`log_progress`), or None for any other record."""
        carried = getattr(record, RECORD_KEY, None)
        return cls(**carried) if isinstance(carried, dict) else None


def log_progress(logger: logging.Logger, progress: Progress, message: str) -> None:
    """Log ``message`` at INFO carrying ``progress`` as a JSON dict (cli/console.py draws it)."""
    logger.info(message, extra={RECORD_KEY: progress.as_record()})


__all__ = ["Progress", "log_progress", "worth_a_line"]
