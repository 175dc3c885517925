"""The item embedding cache: a vector per (encoder, rendered item text), kept beside the runs.

    <output>/embedding-cache/<encoder_key>/part-<run_id>.parquet   (text_sha256, embedding)

An item's vector is a pure function of the encoder (weights, max_length, precision,
pooling) and of its rendered text, so a run looks up every item's `text_sha256` under its
encoder key and embeds only the misses. A new model, a changed max_length or precision
gives a new key: nothing matches and everything is embedded again. A changed text template
changes the texts, hence their hashes: the same. Removed items are simply not looked up.

Each run adds one part file with the vectors it computed, written under a temporary name
and renamed into place (object stores: one PUT), so a crash never leaves a torn part. When
the parts pile up, `compact` rewrites the entries still in use into one part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from chatrec.encoder import POOLING
from chatrec.schemas import embedding_type
from chatrec.sources import filesystem_for

logger = logging.getLogger(__name__)

CACHE_DIR = "embedding-cache"
# Nightly runs each add a small part; past this many, the next run compacts.
MAX_PARTS = 16


def encoder_key(*, fingerprint: str, max_length: int, precision: str) -> str:
    """What an item vector depends on besides its text, as a short stable key."""
    spec = {"fingerprint": fingerprint, "max_length": max_length, "precision": precision, "pooling": POOLING}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cache_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field("text_sha256", pa.string(), nullable=False),
        pa.field("embedding", embedding_type(dim), nullable=False),
    ])


class EmbeddingCache:
    def __init__(self, output_root: str, key: str, dim: int) -> None:
        self.fs, root = filesystem_for(output_root.rstrip("/"))
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        root = os.path.abspath(root) if self.local else root.rstrip("/")
        self.key, self.dim = key, dim
        self.dir = posixpath.join(root, CACHE_DIR, key)
        self.schema = cache_schema(dim)

    def _parts(self) -> list[str]:
        if self.fs.get_file_info(self.dir).type != pafs.FileType.Directory:
            return []
        return sorted(
            i.path for i in self.fs.get_file_info(pafs.FileSelector(self.dir))
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        )

    def lookup(self, hashes: pa.Array | list[str]) -> pa.Table:
        """The cached (text_sha256, embedding) rows for `hashes`, one row per distinct hash found."""
        parts = self._parts()
        if not parts:
            return self.schema.empty_table()
        wanted = pa.array(hashes, pa.string()) if isinstance(hashes, list) else hashes
        found = pads.dataset(parts, filesystem=self.fs, format="parquet", schema=self.schema).to_table(
            filter=pads.field("text_sha256").isin(wanted)
        )
        return _distinct(found)

    def add(self, table: pa.Table, *, name: str) -> int:
        """Store (text_sha256, embedding) rows as one new part; returns rows stored."""
        table = _distinct(table.select(self.schema.names).cast(self.schema))
        if table.num_rows == 0:
            return 0
        self._write(table, f"part-{name}-{uuid.uuid4().hex[:8]}.parquet")
        return table.num_rows

    def compact(self, keep: pa.Array | list[str]) -> int | None:
        """When there are more than MAX_PARTS parts, rewrite the entries whose hash is in `keep`
        into one part and delete the rest. Returns the entries kept, or None if not needed."""
        parts = self._parts()
        if len(parts) <= MAX_PARTS:
            return None
        kept = pads.dataset(parts, filesystem=self.fs, format="parquet", schema=self.schema).to_table(
            filter=pads.field("text_sha256").isin(pa.array(keep, pa.string()))
        )
        kept = _distinct(kept)
        self._write(kept, f"compacted-{uuid.uuid4().hex[:8]}.parquet")  # in place before the old go
        for part in parts:
            self.fs.delete_file(part)
        logger.info("embedding cache %s: compacted %d parts into one (%d vectors)", self.key, len(parts), kept.num_rows)
        return kept.num_rows

    def _write(self, table: pa.Table, file_name: str) -> None:
        self.fs.create_dir(self.dir, recursive=True)
        final = posixpath.join(self.dir, file_name)
        if self.local:
            tmp = posixpath.join(self.dir, f".{file_name}.tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        else:
            pq.write_table(table, final, filesystem=self.fs)


def _distinct(table: pa.Table) -> pa.Table:
    """First row per text_sha256 (equal texts have equal vectors)."""
    if table.num_rows == 0:
        return table
    first = pc.unique(table.column("text_sha256"))
    if len(first) == table.num_rows:
        return table
    index = table.append_column("_i", pa.array(range(table.num_rows), pa.int64()))
    keep = index.group_by("text_sha256", use_threads=False).aggregate([("_i", "min")]).column("_i_min")
    return table.take(keep)
