"""Retention: keep the newest N published runs of an output root, never the live one.

Called only after a run is published (LATEST written), so a failed night never loses its
predecessors. Runs are ordered by their manifest's `created_at` (run ids need not sort by
time: `nightly-…` and hand-named ids mix). Staging directories of failed runs are left
alone: they are there for inspection or resume.
"""

from __future__ import annotations

import json
import logging
import posixpath

import pyarrow.fs as pafs

from chatrec.publish import read_latest
from chatrec.sources import filesystem_for

logger = logging.getLogger(__name__)


def published_runs(root: str) -> list[tuple[str, str]]:
    """(created_at, run_id) of every published run under root, oldest first."""
    fs, root_path = filesystem_for(root.rstrip("/"))
    runs_dir = posixpath.join(root_path.rstrip("/"), "runs")
    if fs.get_file_info(runs_dir).type != pafs.FileType.Directory:
        return []
    runs = []
    for info in fs.get_file_info(pafs.FileSelector(runs_dir)):
        if info.type != pafs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(posixpath.join(info.path, "manifest.json")) as f:
                created = json.loads(f.read().decode())["created_at"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            continue  # not a complete run (an object-store run cut short): not ours to judge
        runs.append((created, posixpath.basename(info.path)))
    return sorted(runs)


def prune_runs(root: str, keep: int) -> list[str]:
    """Delete all but the `keep` newest published runs; the one LATEST names always stays.

    Returns the run ids deleted.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    latest = read_latest(root)
    live = posixpath.basename(latest.rstrip("/")) if latest else None
    runs = [run_id for _, run_id in published_runs(root)]
    doomed = [r for r in runs[: max(len(runs) - keep, 0)] if r != live]
    fs, root_path = filesystem_for(root.rstrip("/"))
    for run_id in doomed:
        fs.delete_dir(posixpath.join(root_path.rstrip("/"), "runs", run_id))
        logger.info("retention: deleted run %s (keeping the %d newest)", run_id, keep)
    return doomed
