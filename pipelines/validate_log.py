"""The interaction log read and validated on the cluster, chunk by chunk.

For a log too big to hold in the driver: the driver plans chunks from the files' footers
(Parquet: runs of row groups of about ROWS_PER_CHUNK rows, each with the file row it starts
at; CSV and RecBole files: one chunk each) and checks the required columns from the headers,
before Ray starts. Ray tasks then read each chunk, validate it against the catalogue's ids
(broadcast once) exactly as the driver does a small log (chatrec.validation), and write its
valid rows, its rejects (rows numbered as in the file) and the users of its rejected rows
as Parquet parts. The driver gets counts back.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.new_item_demand import LogTimes
from chatrec.progress import ProgressCounter
from chatrec.readers import header_columns, read_chunk
from chatrec.sources import detect_format, filesystem_for, resolve_files
from chatrec.validation import reject_counts_by_kind, require_columns, user_ids_in_log, validate_interactions

ROWS_PER_CHUNK = 1 << 20
ID_COLUMNS = ("user_id", "item_id")
# A CSV row of a log (two short ids and a timestamp) takes about this many bytes: a CSV's size
# stands in for its row count when the path is chosen.
CSV_BYTES_PER_ROW = 24


@dataclass(frozen=True)
class LogChunk:
    fs: pafs.FileSystem
    path: str
    display: str
    row_groups: list[int] | None  # Parquet: these row groups; None: the whole file
    first_row: int  # data rows of the file before this chunk


@dataclass(frozen=True)
class LogPlan:
    """The chunks of one log and its size: rows from Parquet footers, estimated for text files."""

    chunks: list[LogChunk]
    rows: int


@dataclass
class LogValidation:
    """What the tasks report: the counts the manifest shows, and a digest of the valid rows
    (a resumed attempt must see the same log)."""

    rows_read: int = 0
    valid: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)
    sha256: str = ""
    times: LogTimes | None = None  # the valid rows' per-item and per-day sums (items seen, new-item demand)

    @property
    def rejected(self) -> int:
        return sum(self.rejects_by_reason.values())


def plan_log(table: TableInput, rows_per_chunk: int | None = None) -> LogPlan:
    """Chunks of every file `table` names (about `rows_per_chunk` rows, default
    ROWS_PER_CHUNK); raises InputDataError for a missing required column (from the headers)
    as reading the whole log would."""
    rows_per_chunk = rows_per_chunk or ROWS_PER_CHUNK
    chunks, rows = [], 0
    for location in table.locations:
        resolved = resolve_files(location)
        fs = resolved.filesystem
        for path, display in zip(resolved.paths, resolved.display):
            names = header_columns(fs, path, display, table)
            require_columns(names, ("user_id", "item_id", "timestamp"), "interactions", display)
            if detect_format(path, table.format) != "parquet":
                chunks.append(LogChunk(fs, path, display, None, 0))
                rows += fs.get_file_info(path).size // CSV_BYTES_PER_ROW
                continue
            meta = pq.read_metadata(path, filesystem=fs)
            start, group, group_rows = 0, [], 0
            for i in range(meta.num_row_groups):
                group.append(i)
                group_rows += meta.row_group(i).num_rows
                if group_rows >= rows_per_chunk or i == meta.num_row_groups - 1:
                    chunks.append(LogChunk(fs, path, display, group, start))
                    start, group, group_rows = start + group_rows, [], 0
            if meta.num_row_groups == 0:
                chunks.append(LogChunk(fs, path, display, [], 0))
            rows += meta.num_rows
    return LogPlan(chunks, rows)


def validate_log_on_cluster(
    plan: LogPlan,
    *,
    table: TableInput,
    item_ids: pa.Array,
    valid_path: str,
    rejects_path: str,
    users_path: str,
    progress: ProgressCounter | None = None,
) -> LogValidation:
    """Every chunk of `plan` validated by a Ray task: valid rows (user_id, item_id,
    timestamp) to `valid_path`, rejects (schemas.REJECTS) to `rejects_path`, the user ids of
    rejected rows to `users_path` (they get recommendations even with no valid row). An
    InputDataError of any chunk is raised here, as the driver would raise it."""
    ids = ray.put(item_ids)
    refs = [_validate_chunk.remote(chunk, i, table=table, item_ids=ids, valid_path=valid_path,
                                   rejects_path=rejects_path, users_path=users_path, progress=progress)
            for i, chunk in enumerate(plan.chunks)]
    # Each chunk's per-item sums are added as it finishes: catalogue-sized, they are not
    # all held at once.
    results: list[dict | InputDataError | None] = [None] * len(refs)
    times = LogTimes.of(np.zeros(0, np.int64), np.zeros(0, np.int64), len(item_ids))
    position = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        result = ray.get(done[0])
        if not isinstance(result, InputDataError):
            times.add(result.pop("times"))
        results[position[done[0]]] = result
    errors = [r for r in results if isinstance(r, InputDataError)]
    if errors:
        # The first that names a row: a chunk of nulls can fail a type check with no example
        # where the whole file gives the first non-null one.
        raise next((e for e in errors if e.row is not None), errors[0])
    out = LogValidation(times=times)
    digest = hashlib.sha256()
    for result in results:  # in chunk order: the digest does not depend on which task ended first
        out.rows_read += result["rows_read"]
        out.valid += result["valid"]
        out.rejects_by_reason.update(result["rejects_by_reason"])
        digest.update(result["sha256"].encode())
    out.sha256 = digest.hexdigest()
    return out


@ray.remote(num_cpus=1, max_retries=3)
def _validate_chunk(chunk: LogChunk, index: int, *, table: TableInput, item_ids: pa.Array, valid_path: str,
                    rejects_path: str, users_path: str, progress: ProgressCounter | None) -> dict | InputDataError:
    """One chunk read, validated and written; its counts, or the InputDataError it hit."""
    try:
        raw = read_chunk(chunk.fs, chunk.path, chunk.display, table, id_columns=ID_COLUMNS,
                         row_groups=chunk.row_groups, first_row=chunk.first_row)
        validated = validate_interactions(raw, location=chunk.display, item_ids=item_ids)
    except InputDataError as e:
        return e
    valid = validated.table.select(["user_id", "item_id", "timestamp"])
    name = f"part-{index:05d}.parquet"
    _write(valid, valid_path, name)
    if validated.rejects.num_rows:
        _write(validated.rejects, rejects_path, name)
        everyone = user_ids_in_log(raw)
        kept = pc.unique(valid.column("user_id"))
        _write(pa.table({"user_id": everyone.filter(pc.invert(pc.is_in(everyone, value_set=kept)))}), users_path, name)
    if progress is not None:
        progress.add(raw.num_rows)
    rows = pc.index_in(valid.column("item_id"), value_set=item_ids).to_numpy(zero_copy_only=False)  # catalogue rows
    times = LogTimes.of(valid.column("timestamp").to_numpy(), rows, len(item_ids))
    return {"rows_read": raw.num_rows, "valid": valid.num_rows, "times": times,
            "rejects_by_reason": reject_counts_by_kind(validated.rejects),
            "sha256": hashlib.sha256(pl.from_arrow(valid).hash_rows(seed=0).to_numpy().tobytes()).hexdigest()}


def _write(table: pa.Table, directory: str, name: str) -> None:
    fs, inner = filesystem_for(directory)
    fs.create_dir(inner, recursive=True)
    pq.write_table(table, posixpath.join(inner, name), filesystem=fs)
