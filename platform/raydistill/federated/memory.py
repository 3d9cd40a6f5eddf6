"""Memory of a process tree, read from ``/proc`` (Linux). No Ray, no psutil.

A local Ray session is the driver plus its descendants (GCS, raylet, workers, actors), so the
driver's tree is "the whole Ray session". RSS counts shared pages (torch libraries, object-store
mappings) once per process and so overstates the total; PSS splits shared pages between the
processes that map them and sums to what the machine actually spends.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["tree_memory", "PeakMemory"]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the "(comm)" that may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(root: int) -> list[int]:
    children, found, stack = _children_map(), [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rollup_kb(pid: int) -> tuple[int, int]:
    """``(Rss, Pss)`` in kB from ``/proc/<pid>/smaps_rollup``; ``(0, 0)`` if unreadable."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree_memory(root: int | None = None) -> dict[str, int]:
    """``{"rss": bytes, "pss": bytes, "processes": n}`` summed over ``root`` and its descendants."""
    pids = _descendants(os.getpid() if root is None else root)
    totals = [_rollup_kb(p) for p in pids]
    return {"rss": 1024 * sum(r for r, _ in totals), "pss": 1024 * sum(p for _, p in totals), "processes": len(pids)}


class PeakMemory:
    """Context manager sampling :func:`tree_memory` every ``interval_s`` on a daemon thread.

    ``peak["rss"]``, ``peak["pss"]`` hold the maxima seen; :meth:`reset_window` starts a new
    window whose maxima are in ``window`` (per-round peaks).
    """

    def __init__(self, interval_s: float = 0.5, root: int | None = None):
        self.interval_s, self.root = interval_s, root
        self.peak = {"rss": 0, "pss": 0, "processes": 0}
        self.window = dict(self.peak)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)

    def sample(self) -> None:
        now = tree_memory(self.root)
        for bucket in (self.peak, self.window):
            for k, v in now.items():
                bucket[k] = max(bucket[k], v)

    def reset_window(self) -> dict[str, int]:
        """Return the finished window's maxima and start a new window."""
        self.sample()
        done, self.window = self.window, {"rss": 0, "pss": 0, "processes": 0}
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
