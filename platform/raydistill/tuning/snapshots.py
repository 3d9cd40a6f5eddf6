"""Searchers whose saved state never shows a half-written file to Tune's upload of the sweep state.

Tune snapshots a sweep's state (trial statuses, the searcher's state) into a driver staging folder
and copies that folder to ``run.storage_path`` on a background thread. The next snapshot does not
wait for that copy: it rewrites the folder first, and the searcher saves through a temporary file
in the same folder (``.<uuid>-tmp-basic-variant-state-<session>.json``, then a rename), so a copy that
listed the folder a moment earlier reaches for a file that is gone and Tune logs ``Saving experiment
state ... failed ... FileNotFoundError`` (Ray 2.60, ``tune/execution/experiment_state.py``). Snapshots
come close together here — ``CheckpointConfig(num_to_keep=2)`` forces one every two trial
checkpoints and trials checkpoint every epoch — and the demo caught the message on a fresh-clone CI
run. The failed copy is harmless (the next snapshot copies the folder again) but reads as a failure.

:class:`StagedSave` makes the searcher write its files in a scratch folder *beside* the staging
folder (same file system, not uploaded) and move each finished file in with one atomic
``os.replace``: the staging folder only ever holds complete files under their final names.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ray.tune.search import BasicVariantGenerator
from ray.tune.search.search_generator import SearchGenerator


class StagedSave:
    """Mixin for a Tune ``SearchAlgorithm``: ``save_to_dir`` saves into a fresh scratch folder next to
    ``dirpath`` and moves every file it wrote into ``dirpath`` by rename (restores read ``dirpath`` as
    before); a save that raises moves nothing and leaves no scratch behind."""

    def save_to_dir(self, dirpath: str, session_str: str = "default"):
        parent = Path(dirpath).parent
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{Path(dirpath).name}-searcher-", dir=parent))
        try:
            result = super().save_to_dir(str(scratch), session_str)
            for path in scratch.iterdir():
                if path.is_file():
                    os.replace(path, Path(dirpath) / path.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return result


class StagedVariantGenerator(StagedSave, BasicVariantGenerator):
    """Tune's random/grid variant generator with :class:`StagedSave`."""


class StagedSearchGenerator(StagedSave, SearchGenerator):
    """Tune's wrapper of a ``Searcher`` (Optuna here) with :class:`StagedSave`."""
