"""Train/valid/test splits: each method's invariants, known answers, cold items, publishing, CLI."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from chatrec import schemas
from chatrec.cli import main
from chatrec.errors import ConfigError, InputDataError, PublishError
from chatrec.evaluation import splits
from chatrec.evaluation.splits import (
    SplitSpec,
    make_items_cold,
    parse_cutoff,
    parse_ratios,
    read_log,
    split_global_time,
    split_leave_last,
    split_log,
    split_user_time,
    write_split,
)

LOG_SCHEMA = schemas.INTERACTIONS.append(pa.field("rating", pa.float64()))
# Lengths every random log contains, so the count rules are exercised at their edges.
EDGE_LENGTHS = [1, 2, 3, 9, 10, 19, 20, 25]


def random_log(seed: int = 7, users: int = 30, items: int = 40) -> pa.Table:
    """Users of 1..25 rows over 40 items; timestamps 0..39, so many rows tie."""
    rng = np.random.default_rng(seed)
    lengths = EDGE_LENGTHS + rng.integers(1, 26, size=users - len(EDGE_LENGTHS)).tolist()
    rows = [
        {
            "user_id": f"u{u:02d}",
            "item_id": f"i{rng.integers(items):02d}",
            "timestamp": int(rng.integers(0, 40)),
            "rating": float(rng.integers(1, 6)),
        }
        for u, length in enumerate(lengths)
        for _ in range(length)
    ]
    order = rng.permutation(len(rows))  # users interleaved, as in a real log
    return pa.Table.from_pylist([rows[i] for i in order], schema=LOG_SCHEMA)


def make_log(rows: list[tuple]) -> pa.Table:
    """(user, item, timestamp[, rating]) tuples as a clean log."""
    return pa.Table.from_pylist(
        [dict(zip(("user_id", "item_id", "timestamp", "rating"), (*r, 1.0)[:4])) for r in rows],
        schema=LOG_SCHEMA,
    )


def keys_by_user(table: pa.Table) -> dict[str, list[tuple[int, str]]]:
    out = defaultdict(list)
    for r in table.to_pylist():
        out[r["user_id"]].append((r["timestamp"], r["item_id"]))
    return out


def multiset(*tables: pa.Table) -> Counter:
    return Counter(tuple(r.values()) for t in tables for r in t.to_pylist())


def assert_same_rows(split, log: pa.Table) -> None:
    assert multiset(split.train, split.valid, split.test) == multiset(log)
    for part in (split.train, split.valid, split.test):
        assert part.schema == log.schema


def triples(table: pa.Table) -> list[tuple]:
    return [(r["user_id"], r["item_id"], r["timestamp"]) for r in table.to_pylist()]


# -- user-time --------------------------------------------------------------------------


def expected_8_1_1(c: int) -> tuple[int, int, int]:
    """(train, valid, test) for 8:1:1, derived by hand: floor(0.1 c) for valid and test,
    then a 0 becomes 1 while train keeps a row, test first. Valid for c < 30."""
    if c == 1:
        return 1, 0, 0
    if c == 2:
        return 1, 0, 1
    if c < 20:
        return c - 2, 1, 1
    return c - 4, 2, 2


def test_user_time_counts_and_chronology_on_random_log():
    log = random_log()
    split = split_user_time(log)
    assert_same_rows(split, log)
    total = Counter(log.column("user_id").to_pylist())
    assert max(total.values()) < 30 and set(EDGE_LENGTHS) <= set(total.values())
    train, valid, test = (keys_by_user(p) for p in (split.train, split.valid, split.test))
    for user, c in total.items():
        assert (len(train[user]), len(valid[user]), len(test[user])) == expected_8_1_1(c), user
        # (timestamp, item_id) never goes backwards from train to valid to test
        if valid[user]:
            assert max(train[user]) <= min(valid[user]) and max(valid[user]) <= min(test[user])
        if test[user]:
            assert max(train[user]) <= min(test[user])
    assert split.info["method"] == "user-time" and split.info["ratios"] == [0.8, 0.1, 0.1]


@pytest.mark.parametrize(
    "ratios, expected",
    [
        ((0.5, 0.5, 0.0), {1: (1, 0, 0), 2: (1, 1, 0), 3: (2, 1, 0)}),
        ((0.6, 0.2, 0.2), {2: (1, 0, 1), 4: (2, 1, 1), 10: (6, 2, 2)}),
        ((0.42, 0.29, 0.29), {100: (42, 29, 29)}),  # 0.29 * 100 floors to 29, not 28
    ],
)
def test_user_time_counts_for_other_ratios(ratios, expected):
    log = make_log([(f"u{c}", f"i{k}", k) for c in expected for k in range(c)])
    split = split_user_time(log, ratios)
    parts = [Counter(p.column("user_id").to_pylist()) for p in (split.train, split.valid, split.test)]
    for c, counts in expected.items():
        assert tuple(part[f"u{c}"] for part in parts) == counts


def test_user_time_breaks_ties_by_item_then_row_order_and_takes_polars():
    # All four rows at t=5: chronological order is a(r=2), a(r=1) by row order, then b, c.
    log = make_log([("u", "c", 5, 4.0), ("u", "a", 5, 2.0), ("u", "b", 5, 3.0), ("u", "a", 5, 1.0)])
    split = split_user_time(log, (0.5, 0.25, 0.25))
    assert [r["rating"] for r in split.train.to_pylist()] == [2.0, 1.0]
    assert split.valid.column("item_id").to_pylist() == ["b"]
    assert split.test.column("item_id").to_pylist() == ["c"]
    from_polars = split_user_time(pl.from_arrow(random_log()))
    from_arrow = split_user_time(random_log())
    for a, b in zip((from_polars.train, from_polars.test), (from_arrow.train, from_arrow.test)):
        assert a.equals(b)


# -- leave-last -------------------------------------------------------------------------


def hand_log() -> pa.Table:
    a = [("a", f"a{k}", k) for k in range(1, 7)]  # 6 rows
    b = [("b", f"b{k}", k) for k in range(1, 4)]  # 3 rows
    c = [("c", f"c{k}", k) for k in range(1, 5)]  # 4 rows
    d = [("d", "d1", 1)]
    # e: three rows tie at t=5; by item then row order they run x(2.0), x(3.0), y.
    e = [("e", "y", 5, 1.0), ("e", "x", 5, 2.0), ("e", "z", 1, 4.0), ("e", "x", 5, 3.0)]
    return make_log(a[::-1] + b + c[::-1] + d + e)  # some users stored newest first


def test_leave_last_exact_rows_n2():
    split = split_leave_last(hand_log(), n=2)
    # a: 6 >= 2n+1 rows -> 2 train, 2 valid, 2 test. b: 3 rows -> test 2, train 1, no valid.
    # c: 4 rows -> test 2, train 1, valid the 1 left. d: 1 row -> train. e: 4 rows like c.
    assert triples(split.train) == [
        ("a", "a1", 1), ("a", "a2", 2), ("b", "b1", 1), ("c", "c1", 1), ("d", "d1", 1), ("e", "z", 1),
    ]
    assert triples(split.valid) == [("a", "a3", 3), ("a", "a4", 4), ("c", "c2", 2), ("e", "x", 5)]
    assert triples(split.test) == [
        ("a", "a5", 5), ("a", "a6", 6), ("b", "b2", 2), ("b", "b3", 3), ("c", "c3", 3), ("c", "c4", 4),
        ("e", "x", 5), ("e", "y", 5),
    ]
    assert split.valid.filter(pc.equal(split.valid.column("user_id"), "e")).column("rating").to_pylist() == [2.0]
    assert split.info["n"] == 2 and split.info["method"] == "leave-last"


def test_leave_last_n1_keeps_single_rows_in_train():
    split = split_leave_last(hand_log(), n=1)
    assert triples(split.test) == [("a", "a6", 6), ("b", "b3", 3), ("c", "c4", 4), ("e", "y", 5)]
    assert triples(split.valid) == [("a", "a5", 5), ("b", "b2", 2), ("c", "c3", 3), ("e", "x", 5)]
    assert ("d", "d1", 1) in triples(split.train)


# -- global-time ------------------------------------------------------------------------


def test_global_time_cutoff_is_respected():
    log = random_log()
    split = split_global_time(log, cutoff=20)
    assert_same_rows(split, log)
    assert max(split.train.column("timestamp").to_pylist()) < 20
    assert min(split.test.column("timestamp").to_pylist()) >= 20
    assert split.valid.num_rows == 0 and split.valid.schema == log.schema
    assert split.info["cutoff"] == 20 and split.info["ratios"] is None


def test_global_time_iso_cutoff_is_utc_seconds():
    new_year = 1577836800  # 2020-01-01T00:00:00Z
    assert parse_cutoff("2020-01-01") == new_year
    assert parse_cutoff("2020-01-01T00:00:00Z") == new_year
    assert parse_cutoff("2020-01-01T01:00:00+01:00") == new_year
    assert parse_cutoff(str(new_year)) == new_year
    log = make_log([("u", "a", new_year - 1), ("u", "b", new_year), ("v", "c", new_year + 5)])
    split = split_global_time(log, cutoff="2020-01-01")
    assert triples(split.train) == [("u", "a", new_year - 1)]
    assert split.test.column("item_id").to_pylist() == ["b", "c"]


def test_global_time_ratios_keep_ties_together():
    stamps = [1, 1, 2, 2, 2, 2, 4, 5, 6, 6]
    log = make_log([(f"u{k % 3}", f"i{k}", t) for k, t in enumerate(stamps)])
    split = split_global_time(log, ratios=(0.5, 0.3, 0.2))
    # The last 2 rows start at t=6 and the 3 before at t=2: every t=2 row goes to valid,
    # so train has 2 rows, valid 6, test 2.
    assert sorted(split.train.column("timestamp").to_pylist()) == [1, 1]
    assert sorted(split.valid.column("timestamp").to_pylist()) == [2, 2, 2, 2, 4, 5]
    assert sorted(split.test.column("timestamp").to_pylist()) == [6, 6]
    assert split.info["cutoffs"] == {"valid_from": 2, "test_from": 6}


def test_global_time_ratios_on_random_log():
    log = random_log()
    split = split_global_time(log)
    assert_same_rows(split, log)
    stamps = [set(p.column("timestamp").to_pylist()) for p in (split.train, split.valid, split.test)]
    assert max(stamps[0]) < min(stamps[1]) and max(stamps[1]) < min(stamps[2])
    assert split.info["cutoffs"] == {"valid_from": min(stamps[1]), "test_from": min(stamps[2])}


# -- cold items, determinism ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [SplitSpec("user-time", cold_items=0.25), SplitSpec("leave-last", n=2, cold_items=0.25),
     SplitSpec("global-time", cold_items=0.25)],
    ids=lambda s: s.method,
)
def test_cold_items_only_in_test_with_all_their_rows(spec):
    log = random_log()
    n_items = len(set(log.column("item_id").to_pylist()))
    split = split_log(log, spec)
    plain = split_log(log, SplitSpec(spec.method, n=spec.n))
    cold = set(split.cold_items)
    assert len(cold) == split.info["cold_items"] == int(0.25 * n_items + 0.5) > 0
    assert not cold & set(split.train.column("item_id").to_pylist())
    assert not cold & set(split.valid.column("item_id").to_pylist())
    in_log = Counter(i for i in log.column("item_id").to_pylist() if i in cold)
    in_test = Counter(i for i in split.test.column("item_id").to_pylist() if i in cold)
    assert in_test == in_log
    assert_same_rows(split, log)
    # Warm rows stay where the plain split put them; cold ones join its test rows.
    def warm(rows: Counter) -> Counter:
        return Counter({row: k for row, k in rows.items() if row[1] not in cold})

    assert multiset(split.train) == warm(multiset(plain.train))
    assert multiset(split.valid) == warm(multiset(plain.valid))
    moved = multiset(plain.train, plain.valid) - warm(multiset(plain.train, plain.valid))
    assert multiset(split.test) == multiset(plain.test) + moved


def test_same_seed_same_split_other_seed_other_cold_set():
    log = random_log()
    a = split_log(log, SplitSpec("user-time", cold_items=0.2, seed=3))
    b = split_log(log, SplitSpec("user-time", cold_items=0.2, seed=3))
    c = split_log(log, SplitSpec("user-time", cold_items=0.2, seed=4))
    assert a.cold_items == b.cold_items and all(
        getattr(a, p).equals(getattr(b, p)) for p in ("train", "valid", "test")
    )
    assert len(c.cold_items) == len(a.cold_items) and c.cold_items != a.cold_items


@pytest.mark.parametrize("fraction, count", [(0.5, 9), (0.1, 2), (0.02, 0)])
def test_cold_item_count_is_fraction_of_items_rounded_to_nearest(fraction, count):
    split = split_leave_last(hand_log())  # 17 distinct items
    assert len(make_items_cold(split, fraction, seed=1).cold_items) == count  # 8.5 -> 9, 1.7 -> 2, 0.34 -> 0


def test_cold_items_without_fraction_is_a_no_op():
    split = split_leave_last(hand_log())
    same = make_items_cold(split, 0.0, seed=9)
    assert same.cold_items == () and same.info["cold_items"] == 0 and same.info["seed"] == 9
    assert same.train.equals(split.train) and same.test.equals(split.test)


# -- argument errors --------------------------------------------------------------------

RATIOS_RULE = "--ratios must be 3 non-negative numbers train,valid,test that sum to 1 with train > 0"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: parse_ratios("0.8,0.2"), f"{RATIOS_RULE}, got '0.8,0.2'"),
        (lambda: parse_ratios("0.5,0.3,0.1"), f"{RATIOS_RULE}, got '0.5,0.3,0.1'"),
        (lambda: parse_ratios("0,0.5,0.5"), f"{RATIOS_RULE}, got '0,0.5,0.5'"),
        (lambda: parse_ratios("1.2,-0.1,-0.1"), f"{RATIOS_RULE}, got '1.2,-0.1,-0.1'"),
        (lambda: parse_ratios("a,b,c"), f"{RATIOS_RULE}, got 'a,b,c'"),
        (lambda: split_user_time(random_log(), (0.9, 0.2, 0.1)), f"{RATIOS_RULE}, got (0.9, 0.2, 0.1)"),
        (lambda: SplitSpec("random"), "--by must be one of user-time, global-time, leave-last, got 'random'"),
        (lambda: SplitSpec("user-time", cutoff=5), "--cutoff applies only to --by global-time, got --by user-time"),
        (lambda: SplitSpec("global-time", n=2), "--n applies only to --by leave-last, got --by global-time"),
        (
            lambda: SplitSpec("leave-last", ratios=(0.8, 0.1, 0.1)),
            "--ratios does not apply to --by leave-last: it takes --n",
        ),
        (
            lambda: SplitSpec("global-time", cutoff=5, ratios=(0.8, 0.1, 0.1)),
            "--by global-time takes --cutoff or --ratios, not both",
        ),
        (lambda: SplitSpec("leave-last", n=0), "--n must be an integer >= 1, got 0"),
        (lambda: SplitSpec("user-time", cold_items=1.0), "--cold-items must be a fraction in [0, 1), got 1.0"),
        (lambda: SplitSpec("user-time", cold_items=-0.1), "--cold-items must be a fraction in [0, 1), got -0.1"),
        (lambda: SplitSpec("user-time", seed=-1), "--seed must be a non-negative integer, got -1"),
        (
            lambda: SplitSpec("global-time", cutoff="last tuesday"),
            "--cutoff must be integer seconds since the epoch or an ISO-8601 date/time "
            "(e.g. 2020-01-31 or 2020-01-31T12:00:00Z), got 'last tuesday'",
        ),
    ],
)
def test_argument_errors_name_argument_value_and_rule(make, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make()


# -- reading, publishing, CLI -----------------------------------------------------------


def write_csv(path, text: str):
    path.write_text(text)
    return path


def test_cli_end_to_end_user_time_with_cold_items(tmp_path, capsys):
    log = random_log()
    src = tmp_path / "log.parquet"
    pq.write_table(log, src)
    out = tmp_path / "splits" / "ut"
    args = ["split", "--interactions", str(src), "--out", str(out), "--by", "user-time"]
    args += ["--cold-items", "0.2", "--seed", "3"]
    assert main(args) == 0

    expected = split_log(log, SplitSpec("user-time", cold_items=0.2, seed=3))
    assert sorted(p.name for p in out.iterdir()) == [
        "cold_items.parquet", "rejects.parquet", "split.json", "test.parquet", "train.parquet", "valid.parquet",
    ]
    for name in ("train", "valid", "test"):
        assert pq.read_table(out / f"{name}.parquet").equals(getattr(expected, name)), name
    assert pq.read_table(out / "cold_items.parquet").column("item_id").to_pylist() == list(expected.cold_items)
    assert pq.read_table(out / "rejects.parquet").num_rows == 0

    manifest = json.loads((out / "split.json").read_text())
    assert set(manifest) == {
        "method", "ratios", "cutoff", "cutoffs", "n", "seed", "cold_fraction", "cold_items",
        "counts", "rejects", "inputs", "created_at",
    }
    assert (manifest["method"], manifest["ratios"], manifest["seed"]) == ("user-time", [0.8, 0.1, 0.1], 3)
    assert manifest["cold_items"] == len(expected.cold_items) and manifest["cold_fraction"] == 0.2
    assert manifest["inputs"] == [str(src)] and manifest["rejects"] == {"total": 0, "by_reason": {}}
    train = expected.train
    assert manifest["counts"]["train"] == {
        "rows": train.num_rows,
        "users": len(set(train.column("user_id").to_pylist())),
        "items": len(set(train.column("item_id").to_pylist())),
    }
    assert sum(c["rows"] for c in manifest["counts"].values()) == log.num_rows
    printed = capsys.readouterr().out
    assert str(out) in printed and "train" in printed and "cold items" in printed
    assert [p.name for p in out.parent.iterdir()] == ["ut"]  # no staging directory left behind


def test_rejected_rows_are_written_and_counted(tmp_path):
    src = write_csv(
        tmp_path / "log.csv",
        "user_id,item_id,timestamp,rating\n"
        "u1,i1,100,5\n"
        ",i2,101,4\n"  # null user id
        "u1,i3,notatime,3\n"  # unparsable timestamp
        "u1,i4,2020-01-01T00:00:00Z,2\n"
        "u2,i1,50,1\n"
        "u2,i2,60,1\n",
    )
    out = tmp_path / "out"
    assert main(["split", "--interactions", str(src), "--out", str(out), "--by", "leave-last"]) == 0
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["row"], r["reason"].split(":")[0]) for r in rejects] == [(2, "null id"), (3, "unparsable timestamp")]
    assert all(r["source"] == str(src) for r in rejects)
    manifest = json.loads((out / "split.json").read_text())
    assert manifest["rejects"] == {"total": 2, "by_reason": {"null id": 1, "unparsable timestamp": 1}}
    # u1 keeps i1 (t=100) in train and i4 (2020) in test; u2 keeps i1 in train and i2 in test.
    assert manifest["counts"] == {
        "train": {"rows": 2, "users": 2, "items": 1},
        "valid": {"rows": 0, "users": 0, "items": 0},
        "test": {"rows": 2, "users": 2, "items": 2},
    }
    assert (manifest["n"], manifest["cold_items"]) == (1, 0)
    assert not (out / "cold_items.parquet").exists()
    assert pq.read_table(out / "valid.parquet").schema.names == ["user_id", "item_id", "timestamp", "rating"]


def test_empty_log_after_validation_names_the_location(tmp_path, capsys):
    src = write_csv(tmp_path / "bad.csv", "user_id,item_id,timestamp\n,i1,1\nu1,i2,never\n")
    message = (
        f"file {src}: no valid interactions to split (2 rows read, 2 rejected; "
        f"e.g. row 1 of {src}: null id: user_id is null or empty)"
    )
    with pytest.raises(InputDataError, match=f"^{re.escape(message)}$"):
        read_log([str(src)])
    assert main(["split", "--interactions", str(src), "--out", str(tmp_path / "o"), "--by", "user-time"]) == 3
    assert capsys.readouterr().err.strip() == f"chatrec: error: {message}"


def test_cli_argument_error_exit_code(tmp_path, capsys):
    args = ["split", "--interactions", "x.parquet", "--out", str(tmp_path / "o"), "--by", "user-time", "--cutoff", "5"]
    assert main(args) == 2
    message = "--cutoff applies only to --by global-time, got --by user-time"
    assert capsys.readouterr().err.strip() == f"chatrec: error: {message}"


def test_refuses_non_empty_out_dir_unless_forced(tmp_path, capsys):
    src = tmp_path / "log.parquet"
    pq.write_table(hand_log(), src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = f"--out {out} already exists and is not empty; choose another directory or pass --force to replace it"
    with pytest.raises(PublishError, match=f"^{re.escape(message)}$"):
        write_split(split_leave_last(hand_log()), out)
    args = ["split", "--interactions", str(src), "--out", str(out), "--by", "leave-last"]
    assert main(args) == 4
    assert capsys.readouterr().err.strip() == f"chatrec: error: {message}"
    assert (out / "keep.txt").read_text() == "mine"

    assert main([*args, "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "split.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.parquet", "out"]  # old copy removed

    empty = tmp_path / "empty"
    empty.mkdir()
    write_split(split_leave_last(hand_log()), empty)  # an empty directory is fine
    assert (empty / "train.parquet").exists()


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls, real_write = [], pq.write_table

    def failing_write(table, where):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(table, where)

    monkeypatch.setattr(splits.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_split(split_leave_last(hand_log()), tmp_path / "out")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []
