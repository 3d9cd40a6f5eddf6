"""Progress events. The library logs each step of a long task (an epoch, a trial, a round) with a
:class:`Progress` attached (``extra={"progress": ...}``); the console decides how it looks: a live
bar when stdout is a terminal, otherwise only the milestone lines (:func:`worth_a_line`). No Ray."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field


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


def log_progress(logger: logging.Logger, progress: Progress, message: str) -> None:
    """Log ``message`` at INFO carrying ``progress`` (cli/console.py draws it)."""
    logger.info(message, extra={"progress": progress})


__all__ = ["Progress", "log_progress", "worth_a_line"]
