"""Atomic file operations for artifacts and pointers: write to a hidden temp, flush, rename.

Pure standard library (no torch, no Ray). A hidden ``.*.tmp`` entry is either a write in flight or
one a killed process left behind; :func:`remove_stale_temps` deletes the old ones.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temp file and a rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    os.replace(tmp, path)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` and the folder itself to disk (a crash after the rename must
    not leave an artifact whose files are empty)."""
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path``; an existing artifact there is moved aside first and deleted only after
    the new one is in place, so at every instant ``path`` holds a complete artifact (old or new)."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old.tmp")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the previous artifact back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


STALE_TEMP_S = 86400.0  # a hidden .tmp dir a day old is a save that was killed (kill -9), not one in flight


def remove_stale_temps(folder: Path) -> None:
    """Delete hidden ``.*.tmp`` dirs older than STALE_TEMP_S left by killed saves."""
    now = _dt.datetime.now().timestamp()
    for p in folder.glob(".*.tmp"):
        try:
            if now - p.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file size limit


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a full disk, a quota or a file size limit."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def os_reason(exc: BaseException) -> str:
    """An OSError's own words (``strerror``), else the first 200 characters of the message."""
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
