"""The published run LATEST names, as the nightly refresh reads it: what can be reused.

Only published runs are read (LATEST is written last), so a refresh never builds on a
partial run.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

from chatrec.config import RefreshConfig
from chatrec.publish import read_latest
from chatrec.sources import filesystem_for

logger = logging.getLogger(__name__)

WEEK_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class PreviousRun:
    location: str  # path or URI of the run directory
    manifest: dict

    @classmethod
    def latest(cls, output_root: str) -> "PreviousRun | None":
        location = read_latest(output_root)
        if location is None:
            return None
        fs, path = filesystem_for(location)
        with fs.open_input_stream(posixpath.join(path, "manifest.json")) as f:
            return cls(location, json.loads(f.read().decode()))

    @classmethod
    def at(cls, location: str) -> "PreviousRun":
        """A published run by its directory, or the newest under an output root (its LATEST)."""
        fs, path = filesystem_for(location.rstrip("/"))
        manifest = posixpath.join(path, "manifest.json")
        if fs.get_file_info(manifest).type == pafs.FileType.File:
            with fs.open_input_stream(manifest) as f:
                return cls(location.rstrip("/"), json.loads(f.read().decode()))
        run = cls.latest(location)
        if run is None:
            raise FileNotFoundError(f"{location} is neither a published run (no manifest.json) nor an output root "
                                    "with a LATEST")
        return run

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return filesystem_for(self.location.rstrip("/"))

    def table(self, name: str, columns: list[str]) -> pa.Table | None:
        found = self.table_location(name, columns)
        if found is None:
            return None
        return pads.dataset(found[1], filesystem=found[0], format="parquet").to_table(columns=columns)

    def table_location(self, name: str, columns: list[str]) -> tuple[pafs.FileSystem, str] | None:
        """(filesystem, path) of one of the run's tables, for the cluster to read; None when
        it is absent or was written before one of `columns` existed (nothing to reuse)."""
        fs, path = self._fs()
        location = posixpath.join(path, name)  # a table directory or one Parquet file
        if fs.get_file_info(location).type == pafs.FileType.NotFound:
            return None
        if any(c not in pads.dataset(location, filesystem=fs, format="parquet").schema.names for c in columns):
            return None
        return fs, location

    def read_bytes(self, name: str) -> bytes:
        fs, path = self._fs()
        with fs.open_input_stream(posixpath.join(path, name)) as f:
            return f.read()

    # -- what changed ---------------------------------------------------------------------

    def item_changes(self, item_text: pa.Table) -> dict:
        """Counts of items added, changed (rendered text differs), removed and unchanged since
        this run, from its published item_embeddings (item_id, text_sha256)."""
        before = self.table("item_embeddings", ["item_id", "text_sha256"])
        if before is None:
            return {"added": item_text.num_rows, "changed": 0, "removed": 0, "unchanged": 0}
        joined = item_text.select(["item_id", "text_sha256"]).join(
            before.rename_columns(["item_id", "before"]), "item_id", join_type="full outer"
        )
        now, was = joined.column("text_sha256"), joined.column("before")
        added = pc.sum(pc.and_(pc.is_valid(now), pc.is_null(was))).as_py() or 0
        removed = pc.sum(pc.and_(pc.is_null(now), pc.is_valid(was))).as_py() or 0
        both = pc.and_(pc.is_valid(now), pc.is_valid(was))
        changed = pc.sum(pc.and_(both, pc.not_equal(now, was))).as_py() or 0
        unchanged = pc.sum(pc.and_(both, pc.equal(now, was))).as_py() or 0
        return {"added": int(added), "changed": int(changed), "removed": int(removed), "unchanged": int(unchanged)}

    def cache_invalidation(self, *, fingerprint: str, template: str, max_length: int, precision: str) -> str | None:
        """Why none of this run's item vectors can serve the new run, or None if they can."""
        model = self.manifest.get("model", {})
        if model.get("fingerprint") != fingerprint:
            return f"encoder model changed ({model.get('fingerprint')} -> {fingerprint}): every item re-embedded"
        if self.manifest.get("item_text_template") != template:
            return (f"item text template changed ({self.manifest.get('item_text_template')} -> {template}): "
                    "every item re-embedded")
        if model.get("max_length") != max_length or model.get("precision") != precision:
            return (f"encoder settings changed (max_length {model.get('max_length')} -> {max_length}, precision "
                    f"{model.get('precision')} -> {precision}): every item re-embedded")
        return None

    # -- the matcher ----------------------------------------------------------------------

    def retrain_reason(self, policy: RefreshConfig, *, params: dict, text_fingerprint: str, log_rows: int,
                       now: datetime | None = None) -> str | None:
        """Why the matcher must be trained again, or None to reuse this run's."""
        record = self.manifest.get("matcher")
        if not record or "trained_at" not in record:
            return "the previous run has no reusable matcher"
        if record.get("params") != params:
            return "matcher settings changed"
        if record.get("text_fingerprint") != text_fingerprint:
            return "the item text vectors it was trained on changed (encoder or template)"
        if policy.retrain == "always":
            return "refresh.retrain: always"
        if policy.retrain == "never":
            return None
        if policy.retrain == "weekly":
            trained = datetime.fromisoformat(record["trained_at"])
            age = ((now or datetime.now(timezone.utc)) - trained).total_seconds()
            return f"weekly: trained {age / 86400:.1f} days ago" if age >= WEEK_SECONDS else None
        grown = log_rows / max(int(record.get("log_rows", 0)), 1) - 1.0
        if grown >= policy.retrain_log_growth:
            return f"log-growth: the log grew by {grown:.0%} since training (threshold {policy.retrain_log_growth:.0%})"
        return None

    def matcher_state(self) -> tuple[dict, list[str], dict]:
        """(state dict, the item ids its rows follow, its manifest record)."""
        state = torch.load(io.BytesIO(self.read_bytes("matcher/model.pt")), weights_only=True, map_location="cpu")
        ids = self.table("matcher/item_vectors.parquet", ["item_id"])
        return state, ids.column("item_id").to_pylist(), self.manifest["matcher"]
