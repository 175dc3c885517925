"""MicroLens-50K micro-video interactions with their titles -> the input contract.

The source is the copy in muhhpu/MUSER's data/microlens/ (Ni et al. 2023, "A Content-Driven
Micro-Video Recommendation Dataset at Scale"):

    MicroLens-50k_pairs.tsv    user id <TAB> video ids separated by spaces, oldest first; no header
    MicroLens-50k_titles.csv   item,title: quoted CSV with CR LF line ends

Ids are MicroLens's own user and video ids, kept as text. Titles are kept whole, hashtags
included ("... # comic # Two Yuan"): they are the only text these files have.
Synthetic timestamps, and the output layout: chatrec.datasets.ordered_log.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa

from chatrec.datasets.ordered_log import (
    OrderedLog,
    catalogue,
    fetch_ordered,
    fields,
    read_lines,
    read_text,
    require_files,
)
from chatrec.errors import InputDataError

DATASET = "microlens-50k"
PAIRS = "MicroLens-50k_pairs.tsv"
TITLES = "MicroLens-50k_titles.csv"
ITEMS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
])
ABOUT = (
    "MicroLens-50K (Ni et al. 2023, westlake-repl/MicroLens), from the copy in muhhpu/MUSER: each "
    "user's videos in the order watched, and one English title per video (machine-translated, "
    "with hashtag topics). Ids are MicroLens's own. Upstream: \"It's prohibited to privately "
    "modify the dataset and then offer secondary downloads\": internal evaluation only, do not "
    "redistribute, cite the paper."
)


def fetch_microlens_50k(dest: Path, *, source: Path, force: bool = False) -> Path:
    """Convert the files in `source` into `dest` (cached: a finished `dest` is kept)."""
    return fetch_ordered(DATASET, dest, lambda: read_microlens_50k(source), force=force)


def read_microlens_50k(source: Path) -> OrderedLog:
    paths = require_files(Path(source), (PAIRS, TITLES), DATASET)
    sequences = _sequences(paths[PAIRS])
    table, titled_by_id = catalogue(_titles(paths[TITLES]), sequences, ITEMS_SCHEMA)
    return OrderedLog(DATASET, table, sequences, paths, titled_by_id, ABOUT)


def _sequences(path: Path) -> list[tuple[str, list[str]]]:
    _, lines = read_lines(path, header=False)
    sequences, seen = [], set()
    for row, line in lines:
        user, items = fields(path, row, line, 2, "user id, video ids")
        user, videos = user.strip(), items.split()
        if not user or not videos:
            raise InputDataError("empty user id" if not user else "no video ids after the tab",
                                 source=str(path), row=row)
        if user in seen:
            raise InputDataError(f"user {user!r} has a second line", source=str(path), row=row)
        seen.add(user)
        sequences.append((user, videos))
    return sequences


def _titles(path: Path) -> dict[str, dict]:
    # newline="" lets the csv module take CR LF, and line breaks inside quoted titles.
    reader = csv.reader(io.StringIO(read_text(path, header=True), newline=""), strict=True)
    row = None  # the data row being read; None while reading the header
    try:
        header = next(reader, None)
        if header != ["item", "title"]:
            raise InputDataError(f"expected the header item,title, got {header!r}", source=str(path))
        titles: dict[str, dict] = {}
        row = 0
        for row, record in enumerate(reader, start=1):
            if not record:
                continue  # a blank line
            if len(record) != 2:
                raise InputDataError(f"expected 2 fields (item, title), got {len(record)}", source=str(path), row=row)
            item = record[0].strip()
            if not item or item in titles:
                raise InputDataError(f"item {item!r} is empty or appears twice", source=str(path), row=row)
            titles[item] = {"item_id": item, "title": record[1].strip()}
    except csv.Error as e:
        raise InputDataError(f"not readable as CSV: {e}", source=str(path),
                             row=None if row is None else row + 1) from None
    return titles
