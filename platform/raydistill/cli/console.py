"""The console: the CLI's handlers for the library's loggers. Library modules never print; they log
to ``logging.getLogger(__name__)`` under ``raydistill``, and :func:`attach_console` (called by the
CLI, jobs and whoever drives the library) shows INFO on stdout and WARNING and above on stderr.

Records carrying a :class:`raydistill.core.progress.Progress` (epochs, trials, rounds) are drawn as
one live ``tqdm`` bar per task when stdout is a terminal; otherwise (CI, ``ray job submit`` logs, a
pipe) only their milestone lines are printed: the first, the last and one per tenth of the task."""
from __future__ import annotations

import logging
import sys

from raydistill.core.progress import Progress


class _CurrentStream(logging.StreamHandler):
    """A handler that writes to ``sys.stdout`` / ``sys.stderr`` as they are when a record is emitted
    (pytest's capture, a job's redirected log), not as they were when it was made."""

    def __init__(self, name: str) -> None:
        self._which = name
        super().__init__(getattr(sys, name))

    @property
    def stream(self):
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it once; the property always looks it up
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if _BARS.open:  # a line printed under a live bar would be overdrawn: tqdm moves the bar below it
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            return
        super().emit(record)


def _terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", lambda: False)())


class _Bars(logging.Handler):
    """Draws progress records as one ``tqdm`` bar per task on a terminal; a bar closes at its last step."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.open: dict = {}

    def emit(self, record: logging.LogRecord) -> None:
        progress = Progress.of(record)
        if progress is None or not _terminal():
            return
        from tqdm import tqdm

        bar = self.open.get(progress.task)
        if bar is None or bar.total != progress.total or progress.done < bar.n:  # a new run of that task
            if bar is not None:
                bar.close()
            bar = self.open[progress.task] = tqdm(total=progress.total, desc=progress.task, file=sys.stdout,
                                                  leave=True, dynamic_ncols=True)
        bar.set_postfix(progress.postfix, refresh=False)
        bar.update(progress.done - bar.n)
        if progress.done >= progress.total:
            bar.close()
            del self.open[progress.task]


_BARS = _Bars()


def _plain_line(record: logging.LogRecord) -> bool:
    """Whether the plain stdout handler prints ``record``: everything below WARNING except progress
    steps that a bar draws (terminal) or that are not milestones (no terminal)."""
    if record.levelno >= logging.WARNING:
        return False
    progress = Progress.of(record)
    return progress is None or (not _terminal() and progress.milestone)


# Libraries whose INFO lines are bookkeeping a user does not act on ("Checkpoint successfully created
# at ...", "Started Serve in namespace ...", "Creating initial MLflow database tables"): WARNING and
# above only, unless run.verbose. Errors always reach the console.
LIBRARY_LOGGERS = ("ray.train", "ray.tune", "ray.tune.tune", "ray.serve", "ray.data._internal.execution.streaming_executor",
                   "mlflow.store.db.utils",
                   "ray._private.worker",  # "Started a local Ray instance. View the dashboard at ..."
                   "ray._private.authentication.authentication_token_setup")  # "Generated new authentication token ..."


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def quiet_libraries(verbose: bool = False) -> None:
    """Drop records below WARNING from :data:`LIBRARY_LOGGERS` in this process (``verbose``: keep
    them); idempotent, and in effect before or after those libraries are imported. Each logger gets
    the level (for its children) and a filter (importing Ray Serve resets ``ray.serve``'s level to
    INFO; filters survive that)."""
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(logging.NOTSET if verbose else logging.WARNING)
        if verbose:
            library.removeFilter(_below_warning)
        elif _below_warning not in library.filters:
            library.addFilter(_below_warning)


def attach_console(level: int = logging.INFO) -> None:
    """Plain ``%(message)s`` lines: below WARNING to stdout, WARNING and above to stderr. Idempotent."""
    root = logging.getLogger("raydistill")
    root.setLevel(level)
    if any(isinstance(h, _CurrentStream) for h in root.handlers):
        return
    out, err = _CurrentStream("stdout"), _CurrentStream("stderr")
    out.addFilter(_plain_line)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.addHandler(_BARS)
    root.propagate = False
