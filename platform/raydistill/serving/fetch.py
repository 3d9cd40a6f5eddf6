"""Artifacts named by a URI (``s3://``, ``gs://``, ``file://``), fetched once into a cache under the
storage root. No Ray.

The cache is keyed by the weights' sha256 that the remote card declares:
``<storage>/fetched/<sha256>/`` holds a complete, verified artifact (``load_artifact`` checks the
weights against that sha256 before a copy enters the cache). A fetch first lists the remote files and
refuses an artifact larger than the cap; it downloads into a hidden temp directory that is removed
if anything fails, and renames it into place only once verified. After each fetch the least recently
used entries are evicted until the cache is within the cap again (the one just fetched stays).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from raydistill.core.artifacts import CARD_FILE, ArtifactError, load_artifact

logger = logging.getLogger(__name__)

FETCH_DIR = "fetched"  # under the storage root
FETCH_CACHE_MAX_BYTES = 4 * 1024**3  # one artifact, and the whole cache, at most this


def is_remote_uri(ref: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: fetched with pyarrow, then verified like a dir."""
    return "://" in ref


def _remote_listing(fs, remote: str) -> list:
    import pyarrow.fs as pafs

    return [i for i in fs.get_file_info(pafs.FileSelector(remote, recursive=True)) if i.type == pafs.FileType.File]


def _declared_sha256(fs, remote: str, uri: str) -> str:
    with fs.open_input_stream(f"{remote.rstrip('/')}/{CARD_FILE}") as stream:
        card = json.loads(stream.read(1_000_000).decode("utf-8"))
    sha = str(card.get("weights_sha256", ""))
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ArtifactError(f"cannot fetch artifact {uri}: its {CARD_FILE} declares no weights_sha256")
    return sha


def _cached(path: Path) -> bool:
    """Whether ``path`` holds a complete artifact that still verifies (a damaged entry is removed)."""
    if not path.is_dir():
        return False
    try:
        load_artifact(path)
    except ArtifactError as exc:
        logger.warning(f"cached artifact {path.name} no longer verifies ({exc}); fetching it again")
        shutil.rmtree(path, ignore_errors=True)
        return False
    os.utime(path)  # most recently used
    return True


def _verify(path: Path, uri: str) -> None:
    try:
        load_artifact(path)
    except ArtifactError as exc:
        raise ArtifactError(f"cannot fetch artifact {uri}: {exc}") from exc


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def evict(root: Path, *, keep: Path, max_bytes: int) -> list[str]:
    """Remove the least recently used cache entries (never ``keep``) until the cache is within
    ``max_bytes``; returns the removed names."""
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime)
    total, removed = sum(_size(p) for p in entries), []
    for entry in entries:
        if total <= max_bytes:
            break
        if entry != keep:
            total -= _size(entry)
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def fetch_artifact(uri: str, cache_root: str | Path | None = None, *,
                   max_bytes: int = FETCH_CACHE_MAX_BYTES) -> Path:
    """The verified local copy of the artifact directory at ``uri`` (module docstring); ``cache_root``
    defaults to a directory in the system's temp dir."""
    import pyarrow
    import pyarrow.fs

    root = Path(cache_root) if cache_root else Path(tempfile.gettempdir()) / "raydistill-fetched"
    try:
        fs, remote = pyarrow.fs.FileSystem.from_uri(uri)
        files = _remote_listing(fs, remote)
        size = sum(i.size for i in files)
        if not files:
            raise ArtifactError(f"cannot fetch artifact {uri}: no files there")
        if size > max_bytes:
            raise ArtifactError(f"cannot fetch artifact {uri}: it is {size / 1e6:.3g} MB, more than the "
                                f"{max_bytes / 1e6:.3g} MB fetch cap")
        final = root / _declared_sha256(fs, remote, uri)
        if _cached(final):
            return final
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{final.name[:12]}-", suffix=".tmp", dir=root))
        try:
            pyarrow.fs.copy_files(remote, str(partial), source_filesystem=fs)
            _verify(partial, uri)  # before it enters the cache
            if not final.exists():  # (another process may have fetched the same weights meanwhile)
                os.replace(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise ArtifactError(f"cannot fetch artifact {uri}: {exc}") from exc
    evict(root, keep=final, max_bytes=max_bytes)
    return final


__all__ = ["FETCH_DIR", "FETCH_CACHE_MAX_BYTES", "is_remote_uri", "fetch_artifact", "evict"]
