"""Amazon Industrial & Scientific (Amazon Reviews 2018, UniSRec-style) -> the input contract.

The source is the RecBole layout of ysh-1998/CoWPiRec's dataset/Scientific/ (5-core, each
user's reviews in review-time order, leave-one-out):

    Scientific.train.inter   user index, history (item indexes), target: one row per train target
    Scientific.valid.inter   the same, one row per user (the second-last item)
    Scientific.test.inter    the same, one row per user (the last item)
    Scientific.item2index    ASIN <TAB> item index            (no header)
    Scientific.user2index    reviewer id <TAB> user index     (no header)
    Scientific.text          ASIN <TAB> "title. category path. brand. "

Sequences are rebuilt from the .inter files. train.inter lists a user's rows last target
first and cuts histories to the latest few items, so the user's rows read backwards (the
first one's history is the user's first item), then the valid and test rows, give the whole
sequence. Every row's history must be the end of the sequence rebuilt so far: a row that is
not stops the read, named by file and row.

Ids are the raw ASIN and reviewer id, not the integer indexes. The indexes number items in
the order one preprocessing run met them and change when it is re-run with other filters;
the raw ids are the same in every version and join to the Amazon 2018 files.

Item text becomes title, categories (the category path as one entry: upstream joined its
levels with spaces, so they cannot be told apart) and brand (rendered as "brand: ...").
Synthetic timestamps, and the output layout: chatrec.datasets.ordered_log.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from chatrec.datasets.ordered_log import (
    OrderedLog,
    catalogue,
    check_recbole_header,
    fetch_ordered,
    fields,
    read_lines,
    require_files,
)
from chatrec.errors import InputDataError

DATASET = "amazon-scientific"
PREFIX = "Scientific"
INTER_PARTS = ("train", "valid", "test")  # in time order: a user's valid row follows their train rows
FILES = (*(f"{PREFIX}.{part}.inter" for part in INTER_PARTS),
         f"{PREFIX}.item2index", f"{PREFIX}.user2index", f"{PREFIX}.text")
# Every category path in this data set starts with its top category (4,251 of 4,385 items;
# the rest have an empty path), which finds the path in a text whose title or brand holds
# ". " itself ("Mr. Heater").
TOP_CATEGORY = "Industrial & Scientific"
ITEMS_SCHEMA = pa.schema([
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("title", pa.string(), nullable=False),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("brand", pa.string()),
])
ABOUT = (
    "Amazon Review Data 2018 (Ni, Li, McAuley, EMNLP 2019), category Industrial_and_Scientific, "
    "as preprocessed in ysh-1998/CoWPiRec (items with metadata, 5-core, each user's reviews in "
    "review-time order). Ids are the raw ASINs and reviewer ids. Item text: title, the category "
    "path (one entry) and brand. No licence is stated for the data: research use, internal "
    "evaluation only."
)


def fetch_amazon_scientific(dest: Path, *, source: Path, force: bool = False) -> Path:
    """Convert the files in `source` into `dest` (cached: a finished `dest` is kept)."""
    return fetch_ordered(DATASET, dest, lambda: read_amazon_scientific(source), force=force)


def read_amazon_scientific(source: Path) -> OrderedLog:
    paths = require_files(Path(source), FILES, DATASET)
    items = _index(paths[f"{PREFIX}.item2index"], "ASIN")
    users = _index(paths[f"{PREFIX}.user2index"], "reviewer id")
    events: dict[int, list[_Event]] = defaultdict(list)
    for part in INTER_PARTS:
        path = paths[f"{PREFIX}.{part}.inter"]
        rows = _inter_rows(path, items, users)
        if part == "train":
            rows.reverse()  # each user's train rows are written last target first
        for event in rows:
            events[event.user].append(event)
    sequences = [
        (users[user], [items[i] for i in _rebuild(user, events[user])]) for user in sorted(events)
    ]
    texts = _texts(paths[f"{PREFIX}.text"])
    table, titled_by_id = catalogue(texts, sequences, ITEMS_SCHEMA)
    return OrderedLog(DATASET, table, sequences, paths, titled_by_id, ABOUT)


def split_text(text: str) -> tuple[str, str, str]:
    """'title. category path. brand. ' -> (title, category path, brand), '' for an empty part.

    A text of any other shape is all title: nothing is lost, only not split.
    """
    body = text.rstrip()
    body = body[:-1] if body.endswith(".") else body
    at = body.find(". " + TOP_CATEGORY)
    if at >= 0:
        path, _, brand = body[at + 2 :].partition(". ")
        return body[:at].strip(), path.strip(), brand.strip()
    at = (body + " ").find(". . ")  # no category path: "title. . brand", or "title. . " with no brand
    if at >= 0:
        return body[:at].strip(), "", body[at + 4 :].strip()
    return text.strip(), "", ""


@dataclass(frozen=True)
class _Event:
    user: int
    history: list[int]
    target: int
    source: Path
    row: int


def _index(path: Path, what: str) -> dict[int, str]:
    """`id <TAB> index` lines -> {index: id}; an index or id given twice stops the read."""
    _, lines = read_lines(path, header=False)
    by_index: dict[int, str] = {}
    seen: set[str] = set()
    for row, line in lines:
        raw_id, index = fields(path, row, line, 2, f"{what}, index")
        raw_id = raw_id.strip()
        number = _int(index, path, row)
        if not raw_id or raw_id in seen or number in by_index:
            detail = "is empty" if not raw_id else f"{raw_id!r} or index {number} appears twice"
            raise InputDataError(f"{what} {detail}", source=str(path), row=row)
        by_index[number] = raw_id
        seen.add(raw_id)
    return by_index


def _inter_rows(path: Path, items: dict[int, str], users: dict[int, str]) -> list[_Event]:
    head, lines = read_lines(path, header=True)
    check_recbole_header(path, head, ("user_id", "item_id_list", "item_id"))
    rows = []
    for row, line in lines:
        user, history, target = fields(path, row, line, 3, "user, history, target")
        event = _Event(_int(user, path, row), [_int(i, path, row) for i in history.split()],
                       _int(target, path, row), path, row)
        if event.user not in users:
            raise InputDataError(f"user index {event.user} is not in {PREFIX}.user2index", source=str(path), row=row)
        unknown = [i for i in (*event.history, event.target) if i not in items]
        if unknown:
            raise InputDataError(f"item index {unknown[0]} is not in {PREFIX}.item2index", source=str(path), row=row)
        rows.append(event)
    return rows


def _rebuild(user: int, events: list[_Event]) -> list[int]:
    """A user's item indexes oldest first, from their rows in time order."""
    sequence = list(events[0].history)
    for event in events:
        cut = len(sequence) - len(event.history)
        if cut < 0 or sequence[cut:] != event.history:
            raise InputDataError(
                f"the history of user index {user} does not continue the sequence rebuilt from its earlier "
                f"rows (train rows read last first, then valid, then test): ends {sequence[-3:]}, "
                f"history ends {event.history[-3:]}",
                source=str(event.source), row=event.row,
            )
        sequence.append(event.target)
    return sequence


def _texts(path: Path) -> dict[str, dict]:
    head, lines = read_lines(path, header=True)
    check_recbole_header(path, head, ("item_id", "text"))
    texts: dict[str, dict] = {}
    for row, line in lines:
        asin, text = fields(path, row, line, 2, "ASIN, text")
        asin = asin.strip()
        if not asin or asin in texts:
            raise InputDataError(f"ASIN {asin!r} is empty or appears twice", source=str(path), row=row)
        title, path_text, brand = split_text(text)
        texts[asin] = {"item_id": asin, "title": title,
                       "categories": [path_text] if path_text else None, "brand": brand or None}
    return texts


def _int(text: str, path: Path, row: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputDataError(f"expected an integer index, got {text!r}", source=str(path), row=row) from None
