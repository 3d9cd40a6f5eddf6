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
