"""Data sets that keep each user's order but not the times: the half their readers share.

A reader (amazon_scientific, microlens) parses its source files into an OrderedLog: the
catalogue in the input contract, and each user's items oldest first. This module reads
the source text, gives the log synthetic timestamps, and publishes both tables.

Synthetic timestamps. A user's k-th interaction (k = 1, 2, ...) is at k days after the
epoch, so it prints as 1970-01-(k+1): plainly not a real date. Only the order within a
user is real. What reads only that order sees the data as it is: the user-time and
leave-last splits, histories, recency weights (counted in positions), the matcher's
sequences. What compares times across users does not: every user's k-th interaction
shares one moment, so a global-time split cuts everyone at the same position and its
test part holds only the later interactions of the longer histories; day-based windows
(feedback.dismiss_days) count positions. Users are aligned at their first interaction
because that is the one choice that needs no guess about when anyone started.

Layout of the destination directory (written to a hidden sibling, renamed into place):

    items.parquet         item_id, title, and the data set's other item columns
    interactions.parquet  user_id, item_id, timestamp (int64 seconds, synthetic); by user, oldest first
    README.md             where the data came from, and that the times are synthetic
    dataset.json          source files with their sha256, counts, the timestamp rule (written last)

Errors in a source file name the file and the 1-based data row (a header is not counted),
as everywhere in chatrec.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from chatrec.errors import InputDataError, PublishError
from chatrec.evaluation.splits import move_into_place
from chatrec.manifest import utc_now

logger = logging.getLogger(__name__)

# One day between a user's interactions: the dates then read as positions (1970-01-02 is
# the first), and the first is not 0, which many tools read as "unset".
SYNTHETIC_STEP_S = 86_400
MANIFEST = "dataset.json"
TIMESTAMP_RULE = (
    "synthetic: each user's k-th interaction (k = 1, 2, ...) is at k * 86400 s, day k after "
    "1970-01-01 UTC; only the order within a user is real"
)


@dataclass(frozen=True)
class OrderedLog:
    """A data set as its reader parsed it, before timestamps are made up."""

    dataset: str  # the name `chatrec data fetch` knows it by
    items: pa.Table  # contract columns; every item of `sequences` has a row
    sequences: list[tuple[str, list[str]]]  # (user_id, item ids oldest first), one per user
    sources: dict[str, Path]  # the files read, by name
    titled_by_id: int  # items with no title in the source, titled by their id
    about: str  # a paragraph for README.md: origin, licence


# -- reading source files ----------------------------------------------------------------


def require_files(source: Path, names: Iterable[str], dataset: str) -> dict[str, Path]:
    """The source files by name; the first missing one stops the read, named."""
    paths = {name: Path(source) / name for name in names}
    for path in paths.values():
        if not path.is_file():
            raise InputDataError(
                f"not found: the {dataset} reader needs {', '.join(paths)} in one directory; "
                "pass that directory with --from DIR",
                source=str(path),
            )
    return paths


def read_text(path: Path, *, header: bool) -> str:
    """The whole file as text: UTF-8 (a byte-order mark is dropped), or an error at its row."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        row = line - 1 if header else line
        where = {"row": row} if row > 0 else {}
        raise InputDataError(
            f"not UTF-8 text (byte {data[e.start:e.start + 1]!r}); save the file as UTF-8",
            source=str(path), **where,
        ) from None


def read_lines(path: Path, *, header: bool) -> tuple[str | None, list[tuple[int, str]]]:
    """(header line or None, [(data row, line)]): CR LF or LF line ends, blank lines skipped.

    Lines are split on '\\n' only: str.splitlines would also split on the separators
    Unicode allows inside a title (U+2028, U+0085, ...).
    """
    lines = [line.removesuffix("\r") for line in read_text(path, header=header).split("\n")]
    head = lines.pop(0) if header and lines else None
    return head, [(row, line) for row, line in enumerate(lines, start=1) if line.strip()]


def check_recbole_header(path: Path, head: str | None, expected: tuple[str, ...]) -> None:
    """A RecBole header (`name:type` fields) must name exactly `expected`, in order."""
    names = tuple(field.partition(":")[0].strip() for field in (head or "").split("\t"))
    if names != expected:
        raise InputDataError(
            f"expected a RecBole header with the fields {list(expected)} (as name:type), got {head!r}",
            source=str(path),
        )


def fields(path: Path, row: int, line: str, count: int, what: str) -> list[str]:
    """A line's `count` tab-separated fields; the last keeps any further tabs (text may hold them)."""
    parts = line.split("\t", count - 1)
    if len(parts) != count:
        raise InputDataError(f"expected {count} tab-separated fields ({what}), got {len(parts)}",
                             source=str(path), row=row)
    return parts


def catalogue(texts: dict[str, dict[str, Any]], sequences: list[tuple[str, list[str]]],
              schema: pa.Schema) -> tuple[pa.Table, int]:
    """Items with text in source order, then items of the log without, titled by their id.

    An item keeps its interactions even when the source has no title for it: every method
    (baselines included) then sees the same log. Returns the table and how many items were
    titled by their id.
    """
    rows = dict(texts)
    for _, items in sequences:
        for item in items:
            if item not in rows:
                rows[item] = {"item_id": item, "title": ""}
    titled_by_id = 0
    for item, row in rows.items():
        if not row["title"].strip():
            rows[item] = {**row, "title": item}
            titled_by_id += 1
    return pa.Table.from_pylist(list(rows.values()), schema=schema), titled_by_id


# -- synthetic timestamps and publishing -------------------------------------------------


def interactions_table(sequences: list[tuple[str, list[str]]]) -> pa.Table:
    """(user_id, items oldest first) per user -> the contract's interactions, synthetic times."""
    lengths = np.array([len(items) for _, items in sequences], dtype=np.int64)  # (users,)
    starts = np.cumsum(lengths) - lengths  # (users,) each user's first row
    position = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(starts, lengths) + 1  # (rows,) k = 1, 2, ...
    return pa.table({
        "user_id": pa.array([user for user, items in sequences for _ in items], pa.string()),
        "item_id": pa.array([item for _, items in sequences for item in items], pa.string()),
        "timestamp": pa.array(position * SYNTHETIC_STEP_S, pa.int64()),
    })


def is_converted(dest: Path, dataset: str) -> bool:
    """True when `dest` holds a finished conversion of `dataset` (its dataset.json is written last)."""
    try:
        return json.loads((Path(dest) / MANIFEST).read_text())["dataset"] == dataset
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_manifest(dest: Path) -> dict[str, Any]:
    return json.loads((Path(dest) / MANIFEST).read_text())


def fetch_ordered(dataset: str, dest: Path, read: Callable[[], OrderedLog], *, force: bool = False) -> Path:
    """Convert with `read` into `dest`, unless `dest` already holds this data set (cached).

    A `dest` that is not empty and holds something else is refused unless `force`.
    """
    dest = Path(dest)
    if is_converted(dest, dataset) and not force:
        logger.info("%s already at %s", dataset, dest)
        return dest
    if dest.exists() and not dest.is_dir():
        raise PublishError(f"--dest {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise PublishError(f"--dest {dest} is not empty and holds no {dataset} conversion; "
                           "choose another directory or pass --force to replace it")
    publish(read(), dest)
    return dest


def publish(log: OrderedLog, dest: Path) -> dict[str, Any]:
    """Write the tables, README.md and dataset.json (last) beside `dest`, then rename into place."""
    interactions = interactions_table(log.sequences)
    manifest = _manifest(log, interactions)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        pq.write_table(log.items, staging / "items.parquet")
        pq.write_table(interactions, staging / "interactions.parquet")
        (staging / "README.md").write_text(_readme(log, manifest))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        move_into_place(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s written to %s", log.dataset, dest)
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(log: OrderedLog, interactions: pa.Table) -> dict[str, Any]:
    lengths = np.array([len(items) for _, items in log.sequences], dtype=np.int64)
    return {
        "dataset": log.dataset,
        "created_at": utc_now(),
        "sources": {name: {"path": str(path.resolve()), "sha256": _sha256(path)} for name, path in log.sources.items()},
        "tables": {"items": "items.parquet", "interactions": "interactions.parquet"},
        "counts": {
            "users": len(log.sequences),
            "items": log.items.num_rows,
            "items_in_log": len({item for _, items in log.sequences for item in items}),
            "interactions": interactions.num_rows,
            "items_titled_by_id": log.titled_by_id,
        },
        "history_length": {
            "min": int(lengths.min()) if lengths.size else 0,
            "median": float(np.median(lengths)) if lengths.size else 0.0,
            "max": int(lengths.max()) if lengths.size else 0,
        },
        "timestamps": TIMESTAMP_RULE,
    }


def _readme(log: OrderedLog, manifest: dict[str, Any]) -> str:
    counts = manifest["counts"]
    return f"""# {log.dataset}, converted by `chatrec data fetch {log.dataset}`

{log.about}

{counts['users']:,} users, {counts['items']:,} items, {counts['interactions']:,} interactions.
{counts['items_titled_by_id']:,} items had no title in the source and are titled by their id.
Source files and their sha256: {MANIFEST}.

## The timestamps are synthetic

The source has no times, only each user's order, oldest first. Each user's k-th interaction
(k = 1, 2, ...) has timestamp k * 86400: day k after 1970-01-01 UTC. Only the order within a
user is real.

- `chatrec split --by user-time` and `--by leave-last` use only that order: they are sound.
- `chatrec split --by global-time` is not: every user's k-th interaction shares one time, so a
  global cut is a cut by position, and its test part holds only the later interactions of
  the longer histories.
- Gaps between interactions mean nothing, nor does anything counted in days.

## Tables

- `items.parquet`: {', '.join(log.items.column_names)}
- `interactions.parquet`: user_id, item_id, timestamp (seconds, synthetic), by user, oldest first

For example:

    chatrec split --interactions DIR/interactions.parquet --out splits/loo --by leave-last --n 1
    chatrec run --items DIR/items.parquet --interactions splits/loo/train.parquet splits/loo/valid.parquet --output out
"""
