"""Readers of the data sets that keep each user's order but not the times (Amazon Scientific,
MicroLens-50K): tiny files in the source formats, their errors, synthetic timestamps, the
splits on the converted log, and the real files in ../shared/data2 where they are present."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from chatrec.cli import SHARED_DATA, main
from chatrec.config import TableInput
from chatrec.datasets.amazon_scientific import fetch_amazon_scientific, read_amazon_scientific, split_text
from chatrec.datasets.microlens import PAIRS, TITLES, fetch_microlens_50k, read_microlens_50k
from chatrec.datasets.ordered_log import SYNTHETIC_STEP_S
from chatrec.errors import InputDataError, PublishError
from chatrec.evaluation.splits import read_log
from chatrec.readers import read_table
from chatrec.validation import validate_items

# -- tiny sources, written as the upstream tools write them -------------------------------

ASINS = ["B0", "B1", "B2", "B3", "B4", "B5"]  # index = position
REVIEWERS = ["RA", "RB", "RC"]
# Per user, item indexes oldest first. RA repeats an item; RC has one train item only.
AMAZON_SEQUENCES = {0: [0, 1, 2, 3, 1, 4, 5], 1: [3, 2, 0, 5], 2: [5, 4, 3]}
AMAZON_TEXTS = {
    "B0": "Glass Tube 10 ml. Industrial & Scientific Lab & Scientific Products Lab Tubes. SEOH. ",
    "B1": "Mr. Heater Connector Kit 3/8. Industrial & Scientific Hydraulics Fittings. Mr. Heater. ",
    "B2": "Exhaust Fan, 24 Diameter. . TPI. ",  # no category path
    "B3": "Nitrile Gloves. Industrial & Scientific Professional Medical Supplies. . ",  # no brand
    "B5": "Uranium Ore",  # not in the usual shape: all title
    # B4 has no text
}


def _inter_file(path: Path, rows: list[tuple[int, list[int], int]]) -> None:
    lines = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
    lines += [f"{u}\t{' '.join(map(str, h))}\t{t}" for u, h, t in rows]
    path.write_text("\n".join(lines) + "\n")


def write_amazon(directory: Path, sequences=AMAZON_SEQUENCES, cap: int = 2) -> Path:
    """The Scientific.* files, as CoWPiRec's process_dataset.py writes them (histories cut to `cap`)."""
    directory.mkdir(parents=True, exist_ok=True)
    train, valid, test = [], [], []
    for user, seq in sequences.items():
        items = seq[:-2]
        train += [(user, items[:-k][-cap:], items[-k]) for k in range(1, len(items))]  # last target first
        valid.append((user, items[-cap:], seq[-2]))
        test.append((user, seq[:-1][-cap:], seq[-1]))
    _inter_file(directory / "Scientific.train.inter", train)
    _inter_file(directory / "Scientific.valid.inter", valid)
    _inter_file(directory / "Scientific.test.inter", test)
    (directory / "Scientific.item2index").write_text("".join(f"{a}\t{i}\n" for i, a in enumerate(ASINS)))
    (directory / "Scientific.user2index").write_text("".join(f"{r}\t{i}\n" for i, r in enumerate(REVIEWERS)))
    text = "item_id:token\ttext:token_seq\n" + "".join(f"{a}\t{t}\n" for a, t in AMAZON_TEXTS.items())
    (directory / "Scientific.text").write_text(text, encoding="utf-8")
    return directory


MICROLENS_PAIRS = {"7": ["30", "10", "20"], "8": ["20", "40"], "9": ["10", "30", "40", "50"]}
MICROLENS_TITLES = {  # 50 has no title
    "10": 'a dish, "hot" and fried # homemade summer food',
    "20": "two\nlines",
    "30": "plain title",
    "40": "ünïcode 标题",
}


def write_microlens(directory: Path) -> Path:
    """pairs.tsv and titles.csv with CR LF line ends, the titles quoted, as in the MUSER copy."""
    directory.mkdir(parents=True, exist_ok=True)
    pairs = "".join(f"{u}\t{' '.join(items)}\r\n" for u, items in MICROLENS_PAIRS.items())
    (directory / PAIRS).write_bytes(pairs.encode())
    quoted = ['"' + title.replace('"', '""') + '"' for title in MICROLENS_TITLES.values()]
    titles = "item,title\r\n" + "".join(f"{i},{q}\r\n" for i, q in zip(MICROLENS_TITLES, quoted))
    (directory / TITLES).write_bytes(titles.encode("utf-8"))
    return directory


def _by_user(interactions_path: Path, *, whole: bool = True) -> dict[str, list[str]]:
    """user -> items in timestamp order, checking the timestamps strictly increase per user,
    and for a `whole` log that each user's k-th is at k days (k = 1, 2, ...)."""
    rows = pq.read_table(interactions_path).to_pylist()
    stamps: dict[str, list[int]] = defaultdict(list)
    items: dict[str, list[str]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: (r["user_id"], r["timestamp"])):
        stamps[row["user_id"]].append(row["timestamp"])
        items[row["user_id"]].append(row["item_id"])
    for user, ts in stamps.items():
        assert all(a < b for a, b in zip(ts, ts[1:])), f"timestamps of {user} do not increase: {ts}"
        if whole:
            assert ts == [k * SYNTHETIC_STEP_S for k in range(1, len(ts) + 1)], f"{user}: {ts}"
    return dict(items)


def _validated_items(path: Path):
    raw = read_table(TableInput(path=str(path)), id_columns=("item_id",))
    return validate_items(raw, location=str(path), attributes=None, categories_delimiter="|")


# -- Amazon Scientific ---------------------------------------------------------------------


@pytest.mark.parametrize("text, parts", [
    ("Glass Tube. Industrial & Scientific Lab Tubes. SEOH. ",
     ("Glass Tube", "Industrial & Scientific Lab Tubes", "SEOH")),
    # ". " inside the title and the brand
    ("Mr. Heater Kit. Industrial & Scientific Fittings. Mr. Heater. ",
     ("Mr. Heater Kit", "Industrial & Scientific Fittings", "Mr. Heater")),
    ("Fan. . TPI. ", ("Fan", "", "TPI")),
    ("Gloves. Industrial & Scientific Medical. . ", ("Gloves", "Industrial & Scientific Medical", "")),
    ("Gloves. . . ", ("Gloves", "", "")),
    ("Uranium Ore", ("Uranium Ore", "", "")),
    ("", ("", "", "")),
])
def test_amazon_text_splits_into_title_category_path_and_brand(text, parts):
    assert split_text(text) == parts


@pytest.mark.parametrize("crlf", [False, True])
def test_amazon_sequences_are_rebuilt_from_the_inter_files_with_raw_ids(tmp_path, crlf):
    src = write_amazon(tmp_path / "src")
    if crlf:
        for path in src.iterdir():
            path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    log = read_amazon_scientific(src)
    expected = [(REVIEWERS[u], [ASINS[i] for i in seq]) for u, seq in AMAZON_SEQUENCES.items()]
    assert log.sequences == expected
    items = {row["item_id"]: row for row in log.items.to_pylist()}
    assert items["B1"] == {"item_id": "B1", "title": "Mr. Heater Connector Kit 3/8",
                           "categories": ["Industrial & Scientific Hydraulics Fittings"], "brand": "Mr. Heater"}
    assert (items["B2"]["categories"], items["B3"]["brand"]) == (None, None)
    assert items["B4"] == {"item_id": "B4", "title": "B4", "categories": None, "brand": None}  # no text: its id
    assert log.titled_by_id == 1


def test_amazon_conversion_is_in_the_input_contract_with_synthetic_times(tmp_path):
    dest = fetch_amazon_scientific(tmp_path / "out", source=write_amazon(tmp_path / "src"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging left behind
    by_user = _by_user(dest / "interactions.parquet")
    assert by_user == {REVIEWERS[u]: [ASINS[i] for i in seq] for u, seq in AMAZON_SEQUENCES.items()}

    items = _validated_items(dest / "items.parquet")
    assert items.rejects.num_rows == 0 and items.table.num_rows == len(ASINS)
    rows = {r["item_id"]: r for r in items.table.to_pylist()}
    assert rows["B0"]["attributes"] == ["brand: SEOH"]
    log = read_log([str(dest / "interactions.parquet")])
    assert (log.rejects.num_rows, log.table.num_rows) == (0, sum(map(len, AMAZON_SEQUENCES.values())))

    manifest = json.loads((dest / "dataset.json").read_text())
    assert manifest["counts"] == {"users": 3, "items": 6, "items_in_log": 6, "interactions": 14,
                                  "items_titled_by_id": 1}
    assert manifest["timestamps"].startswith("synthetic")
    assert "The timestamps are synthetic" in (dest / "README.md").read_text()


@pytest.mark.parametrize("file, line, message", [
    ("Scientific.train.inter", "0\t0 1", "expected 3 tab-separated fields"),
    ("Scientific.train.inter", "0\t0 x\t1", "expected an integer index, got 'x'"),
    ("Scientific.valid.inter", "1\t3 2\t9", "item index 9 is not in Scientific.item2index"),
    ("Scientific.test.inter", "7\t0\t1", "user index 7 is not in Scientific.user2index"),
    # a history that is not the end of the sequence rebuilt so far
    ("Scientific.test.inter", "0\t4 4\t5", "does not continue the sequence rebuilt"),
    ("Scientific.item2index", "B9\t1", "ASIN 'B9' or index 1 appears twice"),
])
def test_amazon_malformed_row_names_file_and_row(tmp_path, file, line, message):
    src = write_amazon(tmp_path / "src")
    path = src / file
    lines = path.read_text().splitlines()
    header = file.endswith(".inter")
    lines.append(line)  # the last line: data row = line number, less the header
    path.write_text("\n".join(lines) + "\n")
    row = len(lines) - (1 if header else 0)
    with pytest.raises(InputDataError, match=f"^file {re.escape(str(path))}, row {row}: .*{re.escape(message)}"):
        read_amazon_scientific(src)


def test_amazon_bad_header_and_missing_file_are_named(tmp_path):
    src = write_amazon(tmp_path / "src")
    (src / "Scientific.text").write_text("asin\ttext\nB0\tx\n")
    with pytest.raises(InputDataError, match=r"Scientific\.text: expected a RecBole header"):
        read_amazon_scientific(src)
    (src / "Scientific.user2index").unlink()
    with pytest.raises(InputDataError, match=rf"^file {re.escape(str(src / 'Scientific.user2index'))}: not found"):
        read_amazon_scientific(src)


# -- MicroLens-50K -------------------------------------------------------------------------


def test_microlens_reads_crlf_quoted_titles_and_keeps_order(tmp_path):
    log = read_microlens_50k(write_microlens(tmp_path / "src"))
    assert log.sequences == list(MICROLENS_PAIRS.items())
    titles = {r["item_id"]: r["title"] for r in log.items.to_pylist()}
    assert titles == {**MICROLENS_TITLES, "50": "50"}  # no CR left anywhere; 50 has no title: its id
    assert log.titled_by_id == 1


@pytest.mark.parametrize("file, content, row, message", [
    (PAIRS, b"7\t30 10\r\n8 20 40\r\n", 2, "expected 2 tab-separated fields"),
    (PAIRS, b"7\t30 10\r\n8\t\r\n", 2, "no video ids after the tab"),
    (PAIRS, b"7\t30\r\n\r\n7\t10\r\n", 3, "user '7' has a second line"),  # the blank line counts as a row
    (PAIRS, b"7\t30\r\n8\t1\xff0\r\n", 2, "not UTF-8 text"),
    (TITLES, b"item,title\r\n10,a\r\n20,b,c\r\n", 2, "expected 2 fields (item, title), got 3"),
    (TITLES, b"item,title\r\n10,a\r\n10,b\r\n", 2, "item '10' is empty or appears twice"),
    (TITLES, b'item,title\r\n10,a\r\n20,"b"c\r\n', 2, "not readable as CSV"),
])
def test_microlens_malformed_row_names_file_and_row(tmp_path, file, content, row, message):
    src = write_microlens(tmp_path / "src")
    (src / file).write_bytes(content)
    with pytest.raises(InputDataError, match=f"^file {re.escape(str(src / file))}, row {row}: {re.escape(message)}"):
        read_microlens_50k(src)


def test_microlens_conversion_is_cached_and_refuses_a_foreign_dest(tmp_path):
    src = write_microlens(tmp_path / "src")
    dest = fetch_microlens_50k(tmp_path / "out", source=src)
    assert _by_user(dest / "interactions.parquet") == MICROLENS_PAIRS
    assert _validated_items(dest / "items.parquet").rejects.num_rows == 0
    written = (dest / "dataset.json").stat().st_mtime_ns
    assert fetch_microlens_50k(dest, source=src) == dest and (dest / "dataset.json").stat().st_mtime_ns == written
    with pytest.raises(PublishError, match="holds no amazon-scientific conversion"):
        fetch_amazon_scientific(dest, source=write_amazon(tmp_path / "amazon"))
    (src / TITLES).write_bytes(b"item,title\r\n10,new\r\n")
    fetch_microlens_50k(dest, source=src, force=True)
    assert {r["item_id"]: r["title"] for r in pq.read_table(dest / "items.parquet").to_pylist()}["10"] == "new"


# -- the CLI, and the splits on a converted log --------------------------------------------


def test_cli_fetch_then_leave_last_holds_out_each_users_last_item(tmp_path, capsys):
    dest = tmp_path / "microlens"
    assert main(["data", "fetch", "microlens-50k", "--from", str(write_microlens(tmp_path / "src")),
                 "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{dest}\n3 users, 5 items, 9 interactions; the timestamps are synthetic")

    log = str(dest / "interactions.parquet")
    assert main(["split", "--interactions", log, "--out", str(tmp_path / "loo"), "--by", "leave-last", "--n", "1"]) == 0
    parts = {name: _by_user(tmp_path / "loo" / f"{name}.parquet", whole=False) for name in ("train", "valid", "test")}
    for user, items in MICROLENS_PAIRS.items():
        assert parts["test"][user] == items[-1:]
        held = 2 if len(items) >= 3 else 1  # valid only where train keeps a row
        assert parts["valid"].get(user, []) == items[-held:-1]
        assert parts["train"][user] == items[:-held]

    assert main(["split", "--interactions", log, "--out", str(tmp_path / "ut"), "--by", "user-time"]) == 0
    test = _by_user(tmp_path / "ut" / "test.parquet", whole=False)
    for user, items in test.items():
        assert items == MICROLENS_PAIRS[user][-len(items):]  # the latest rows, in order


def test_cli_fetch_names_the_missing_file(tmp_path, capsys):
    assert main(["data", "fetch", "amazon-scientific", "--from", str(tmp_path), "--dest", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert f"file {tmp_path / 'Scientific.train.inter'}: not found" in err and "--from DIR" in err
    assert not (tmp_path / "o").exists()


# -- the real data sets, where present -----------------------------------------------------

REAL_AMAZON = SHARED_DATA / "amazon_scientific"
REAL_MICROLENS = SHARED_DATA / "microlens50k"


def _real(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} is not here")
    return path


def test_real_amazon_scientific_counts_and_order(tmp_path):
    src = _real(REAL_AMAZON)
    dest = fetch_amazon_scientific(tmp_path / "amazon", source=src)
    counts = json.loads((dest / "dataset.json").read_text())["counts"]
    # SOURCE.md: users 8,442; items 4,385; interactions 59,427; every item has text.
    assert (counts["users"], counts["items"], counts["interactions"]) == (8_442, 4_385, 59_427)
    assert counts["items_titled_by_id"] == 0
    items = pq.read_table(dest / "items.parquet").to_pylist()
    # SOURCE.md: 4,251 texts contain the top category; the others have an empty category path.
    assert sum(r["categories"] is not None for r in items) == 4_251
    squash = lambda s: re.sub(r"\s", "", s)  # noqa: E731  the split drops only whitespace
    texts = dict(line.split("\t", 1) for line in (src / "Scientific.text").read_text().split("\n")[1:] if line)
    for r in items:
        parts = (r["title"], (r["categories"] or [""])[0], r["brand"] or "")
        assert squash(". ".join(parts) + ". ") == squash(texts[r["item_id"]])

    # The order: the full sequences of the .tsv derived beside the data, user by user.
    index_lines = (src / "Scientific.item2index").read_text().splitlines()
    asin = {int(i): a for a, i in (line.split("\t") for line in index_lines)}
    lines = (src / "Scientific.full_sequences.tsv").read_text().splitlines()[1:]
    expected = {user: [asin[int(i)] for i in seq.split()] for _, user, seq in (line.split("\t") for line in lines)}
    by_user = _by_user(dest / "interactions.parquet")
    first_two = [line.split("\t")[1] for line in lines[:2]]
    for user in first_two:
        assert (by_user[user][0], by_user[user][-1]) == (expected[user][0], expected[user][-1])
    assert by_user == expected
    assert read_log([str(dest / "interactions.parquet")]).rejects.num_rows == 0
    assert _validated_items(dest / "items.parquet").rejects.num_rows == 0


def test_real_microlens_50k_counts_and_order(tmp_path):
    src = _real(REAL_MICROLENS)
    dest = fetch_microlens_50k(tmp_path / "microlens", source=src)
    counts = json.loads((dest / "dataset.json").read_text())["counts"]
    # SOURCE.md: users 50,000; items 19,220 (all have a title); interactions 359,708.
    assert (counts["users"], counts["items"], counts["interactions"]) == (50_000, 19_220, 359_708)
    assert counts["items_titled_by_id"] == 0
    by_user = _by_user(dest / "interactions.parquet")
    with (src / PAIRS).open(encoding="utf-8") as f:
        first_two = [next(f).rstrip("\r\n").split("\t") for _ in range(2)]
    for user, seq in first_two:
        assert (by_user[user][0], by_user[user][-1]) == (seq.split()[0], seq.split()[-1])
        assert by_user[user] == seq.split()
    assert read_log([str(dest / "interactions.parquet")]).rejects.num_rows == 0
    assert _validated_items(dest / "items.parquet").rejects.num_rows == 0
