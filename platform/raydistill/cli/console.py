"""The console: the CLI's handlers for the library's loggers. Library modules never print; they log
to ``logging.getLogger(__name__)`` under ``raydistill``, and :func:`attach_console` (called by the
CLI, jobs and whoever drives the library) shows INFO on stdout and WARNING and above on stderr."""
from __future__ import annotations

import logging
import sys


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


# Libraries whose INFO lines are bookkeeping a user does not act on ("Checkpoint successfully created
# at ...", "Started Serve in namespace ...", "Creating initial MLflow database tables"): WARNING and
# above only, unless run.verbose. Errors always reach the console.
LIBRARY_LOGGERS = ("ray.train", "ray.tune", "ray.tune.tune", "ray.serve", "ray.data._internal.execution.streaming_executor",
                   "mlflow.store.db.utils")


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
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.propagate = False
