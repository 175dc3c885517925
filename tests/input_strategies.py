"""Hypothesis strategies for hostile input tables and config files (tests/test_fuzz_inputs.py).

A generated table is a dict of columns, each an Arrow array of any type Arrow or a CSV can
carry: integers of every width, floats with NaN, infinities and huge values, decimals,
dates, times, timestamps with and without zones, booleans, binary, text of every Unicode
category, lists, dictionaries, structs and all-null columns. Id columns draw from a small
pool of near-duplicates, separators and path characters. It is written as Parquet, as CSV
(what pyarrow's writer can write), or as raw CSV bytes (quotes, separators, newlines and
bytes that are not UTF-8).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from hypothesis import strategies as st

MAX_ROWS = 12

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]

# Ids that look alike, are empty, or carry separators and path characters.
ID_POOL = ["a", "a ", " a", "A", "b", "", " ", "0", "007", "7", "-1", "a/b", "../x", "/etc/passwd", "a,b", "a\tb",
           'a"b', "a\nb", "\u00e9", "e\u0301", "\U0001f600", "\x00", "NaN", "null", "1e20", "C:\\x"]

TEXT = st.text(max_size=12)  # every Unicode category but surrogates (which UTF-8 cannot carry)
HUGE_FLOATS = st.sampled_from([1e20, -1e20, 1e300, -1e300, 9.3e18, 2.0**63, 5e-324, 253402300800.0])


def _with_nulls(values: st.SearchStrategy, n: int) -> st.SearchStrategy[list]:
    return st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)


def _column(n: int) -> st.SearchStrategy[pa.Array]:
    """One column of `n` rows of a drawn Arrow type."""

    def ints(t: pa.DataType):
        info = np.iinfo(t.to_pandas_dtype())
        return _with_nulls(st.integers(int(info.min), int(info.max)), n).map(lambda v: pa.array(v, t))

    def floats(t: pa.DataType, width: int):
        values = st.one_of(st.floats(width=width), HUGE_FLOATS if width == 64 else st.floats(width=width))
        if width == 16:
            return _with_nulls(values, n).map(lambda v: pa.array(np.array([x if x is not None else 0 for x in v],
                                                                          np.float16), t,
                                                                 mask=np.array([x is None for x in v], dtype=bool)))
        return _with_nulls(values, n).map(lambda v: pa.array(v, t))

    decimals = st.integers(1, 38).flatmap(lambda p: st.integers(0, min(p, 10)).flatmap(
        lambda s: _with_nulls(st.decimals(min_value=-(10 ** (p - s)) + 1, max_value=10 ** (p - s) - 1, places=s,
                                          allow_nan=False, allow_infinity=False), n)
        .map(lambda v, p=p, s=s: pa.array(v, pa.decimal128(p, s)))))
    timestamps = st.tuples(st.sampled_from(["s", "ms", "us", "ns"]), st.sampled_from([None, "UTC", "Asia/Kolkata"]))\
        .flatmap(lambda unit_tz: _with_nulls(st.datetimes(min_value=dt.datetime(1678, 1, 1),
                                                          max_value=dt.datetime(2261, 12, 31)), n)
                 .map(lambda v, u=unit_tz: pa.array(v, pa.timestamp(*u))))
    strings = st.one_of(TEXT, st.sampled_from(ID_POOL))
    kinds = [
        *[ints(t) for t in INT_TYPES],
        floats(pa.float64(), 64), floats(pa.float32(), 32), floats(pa.float16(), 16),
        decimals,
        timestamps,
        _with_nulls(st.dates(), n).map(lambda v: pa.array(v, pa.date32())),
        _with_nulls(st.times(), n).map(lambda v: pa.array(v, pa.time64("us"))),
        _with_nulls(st.booleans(), n).map(lambda v: pa.array(v, pa.bool_())),
        _with_nulls(st.binary(max_size=8), n).map(lambda v: pa.array(v, pa.binary())),
        _with_nulls(strings, n).map(lambda v: pa.array(v, pa.string())),
        _with_nulls(strings, n).map(lambda v: pa.array(v, pa.large_string())),
        _with_nulls(strings, n).map(lambda v: pa.array(v, pa.string()).dictionary_encode()),
        _with_nulls(st.lists(st.one_of(st.none(), strings), max_size=3), n)
        .map(lambda v: pa.array(v, pa.list_(pa.string()))),
        _with_nulls(st.lists(st.integers(-5, 5), max_size=3), n).map(lambda v: pa.array(v, pa.list_(pa.int64()))),
        _with_nulls(st.fixed_dictionaries({"a": st.integers(-9, 9), "b": TEXT}), n)
        .map(lambda v: pa.array(v, pa.struct([("a", pa.int64()), ("b", pa.string())]))),
        st.just(pa.nulls(n)),
    ]
    return st.one_of(kinds)


def _id_column(n: int) -> st.SearchStrategy[pa.Array]:
    """Mostly text ids from the pool (duplicates likely), sometimes integers or any column."""
    return st.one_of(
        _with_nulls(st.sampled_from(ID_POOL), n).map(lambda v: pa.array(v, pa.string())),
        _with_nulls(st.sampled_from(ID_POOL), n).map(lambda v: pa.array(v, pa.string()).dictionary_encode()),
        _with_nulls(st.integers(-(2**63), 2**63 - 1), n).map(lambda v: pa.array(v, pa.int64())),
        _column(n),
    )


def _timestamp_column(n: int) -> st.SearchStrategy[pa.Array]:
    texts = st.one_of(st.sampled_from(["0", "1e20", "100000000000000000000", "-1e19", "nan", "inf", " 12 ",
                                       "2020-01-01", "2020-01-01T00:00:00+05:30", "2020-13-45", "yesterday", ""]),
                      st.integers(-(2**70), 2**70).map(str), TEXT)
    return st.one_of(
        _with_nulls(st.integers(-(2**63), 2**63 - 1), n).map(lambda v: pa.array(v, pa.int64())),
        _with_nulls(st.one_of(st.floats(), HUGE_FLOATS), n).map(lambda v: pa.array(v, pa.float64())),
        _with_nulls(texts, n).map(lambda v: pa.array(v, pa.string())),
        _column(n),
    )


@st.composite
def tables(draw, required: dict[str, str], optional: dict[str, str] = {}) -> pa.Table:
    """A table with the contract's columns (each sometimes missing) and up to two extra
    columns. `required`/`optional` map column names to kinds: "id", "timestamp" or "any"."""
    n = draw(st.integers(0, MAX_ROWS))
    of_kind = {"id": _id_column, "timestamp": _timestamp_column, "any": _column,
               "text": lambda n: st.one_of(_with_nulls(TEXT, n).map(lambda v: pa.array(v, pa.string())), _column(n))}
    columns: dict[str, pa.Array] = {}
    for name, kind in required.items():
        if draw(st.integers(0, 19)):  # one time in twenty the column is missing
            columns[name] = draw(of_kind[kind](n))
    for name, kind in optional.items():
        if draw(st.booleans()):
            columns[name] = draw(of_kind[kind](n))
    for name in draw(st.lists(st.sampled_from(["rating", "event ", "Ünïcode", "a,b", "__row", ""]), max_size=2,
                              unique=True)):
        columns[name] = draw(_column(n))
    return pa.table(columns) if columns else pa.table({"x": pa.nulls(n)})


def csv_bytes(required: list[str]) -> st.SearchStrategy[bytes]:
    """Raw CSV: a header (sometimes short of a column), rows of any cells, with quotes,
    separators, newlines, ragged rows and bytes that are not UTF-8."""
    cell = st.one_of(st.sampled_from(ID_POOL), TEXT, st.integers(-(2**70), 2**70).map(str),
                     st.floats().map(repr), st.sampled_from(['"quoted, comma"', '"open quote', '""', "\r", "2020-01-01"]))
    raw_cell = st.one_of(cell.map(lambda c: c.encode("utf-8", "surrogatepass")),
                         st.binary(max_size=4), st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"]))

    @st.composite
    def build(draw) -> bytes:
        header = list(required)
        if header and not draw(st.integers(0, 9)):
            header.pop(draw(st.integers(0, len(header) - 1)))
        header += draw(st.lists(st.sampled_from(["rating", "extra"]), max_size=1))
        rows = draw(st.lists(st.lists(raw_cell, min_size=max(len(header) - 1, 0), max_size=len(header) + 1),
                             max_size=MAX_ROWS))
        lines = [",".join(header).encode()] + [b",".join(r) for r in rows]
        return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))

    return build()


def write_table(table: pa.Table, directory: Path, fmt: str) -> Path | None:
    """The table as `fmt` ("parquet" or "csv") in `directory`; None when that format cannot
    carry its types (CSV has no nested values)."""
    path = directory / f"input.{fmt}"
    try:
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            pacsv.write_csv(table, path)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        path.unlink(missing_ok=True)
        return None
    return path


def config_values() -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), TEXT,
                     st.sampled_from(["auto", "cpu", "gpu", "fp16", "parquet", "csv", "", "0", "-1", "s3://b/x"]))
    return st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXT, inner, max_size=3)), max_leaves=6)


# Every section and a few keys of each, right and wrong.
CONFIG_KEYS = {
    "inputs": ["items", "interactions", "users", "feedback", "knowledge_graph", "path", "format", "rename"],
    "encoder": ["model", "max_length", "batch_size", "device", "precision", "num_actors", "cpus_per_actor"],
    "item_text": ["attributes", "categories_delimiter", "knowledge_graph_facts"],
    "history": ["max_items", "half_life", "profile_weight", "users_per_block"],
    "matcher": ["enabled", "max_epochs", "fusion", "device", "num_workers", "profile", "from_run"],
    "retrieval": ["top_k", "backend", "num_actors"],
    "rerank": ["enabled", "model", "users", "engine"],
    "feedback": ["dismiss_days"],
    "output": ["path", "run_id", "keep", "lock_ttl_seconds", "embedding_cache"],
    "ray": ["address", "num_cpus", "in_driver_below"],
    "unknown_section": ["x"],
}


@st.composite
def configs(draw) -> dict:
    config: dict = {}
    for section in draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS)), max_size=4, unique=True)):
        value = draw(st.one_of(config_values(), st.dictionaries(
            st.one_of(st.sampled_from(CONFIG_KEYS[section]), TEXT), config_values(), max_size=3)))
        config[section] = value
    return config

