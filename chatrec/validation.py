"""Validate input tables against the contract.

Two kinds of problem, two outcomes:
- the table as a whole is wrong (missing column, wrong type, duplicate ids): InputDataError
  naming the file, the column and an example row; the run stops.
- a row is wrong (null id, unknown item, unparsable timestamp, empty title): the row goes to
  the rejects table with its file, row number, reason and raw content, and is counted.
  Reasons read "kind: detail"; the manifest counts rejects by kind.
Nothing is dropped without a rejects row.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from chatrec import schemas
from chatrec.catalogue import clip_text
from chatrec.errors import InputDataError
from chatrec.schemas import ROW_COL, SOURCE_COL

_BOOKKEEPING = (SOURCE_COL, ROW_COL)
ITEM_CORE_COLUMNS = ("item_id", "title", "year", "categories", "description")
_REASON = "__reason"


@dataclass(frozen=True)
class Validated:
    """A clean table in its contract schema plus the rows rejected on the way."""

    table: pa.Table
    rejects: pa.Table
    rows_read: int


# -- helpers ----------------------------------------------------------------------------


def _first_source(df: pl.DataFrame, fallback: str) -> str:
    return df[SOURCE_COL][0] if df.height else fallback


def _require_columns(df: pl.DataFrame, required: tuple[str, ...], what: str, location: str) -> None:
    require_columns(df.columns, required, what, _first_source(df, location), row=1 if df.height else None)


def require_columns(columns: list[str], required: tuple[str, ...], what: str, location: str, *,
                    row: int | None = None) -> None:
    """InputDataError naming the first of `required` missing from `columns`."""
    present = [c for c in columns if c not in _BOOKKEEPING]
    for col in required:
        if col not in columns:
            raise InputDataError(
                f"{what} table has no {col!r} column (its columns are {present}); "
                f"add it or map a column to it with `rename`",
                source=location,
                column=col,
                row=row,
            )


def _type_error(df: pl.DataFrame, col: str, expected: str, location: str) -> InputDataError:
    if not df.height:
        return InputDataError(f"expected {expected}, found {df.schema[col]}", source=location, column=col)
    non_null = df.filter(pl.col(col).is_not_null())
    example = non_null.row(0, named=True) if non_null.height else df.row(0, named=True)
    return InputDataError(
        f"expected {expected}, found {df.schema[col]} (e.g. {clip_text(repr(example[col]))})",
        source=example[SOURCE_COL],
        column=col,
        row=example[ROW_COL],
    )


def _empty_id(col: str) -> pl.Expr:
    return pl.col(col).is_null() | (pl.col(col).str.strip_chars() == "")


def _as_text(df: pl.DataFrame, col: str, what: str, location: str, *, join: str) -> pl.Expr:
    """A scalar or list-of-strings column as one text value (lists joined)."""
    dtype = df.schema[col]
    if dtype == pl.String:
        return pl.col(col)
    if dtype == pl.Null:  # an all-empty column: its rows are rejected (or the value left out)
        return pl.lit(None, dtype=pl.String)
    if isinstance(dtype, pl.List) and dtype.inner == pl.String:
        return pl.col(col).list.join(join)
    if dtype.is_numeric() or dtype.is_temporal():
        return _plain_text(pl.col(col), dtype)
    raise _type_error(df, col, what, location)


def _plain_text(value: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A scalar as text; a whole float as an integer (a `year` of 1995.0 reads "1995": a CSV
    column with an empty cell comes out of pandas as floats)."""
    if dtype.is_float():
        whole = value.is_finite() & (value == value.floor()) & (value.abs() < 2**53)
        return pl.when(whole).then(value.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(value.cast(pl.String))
    return value.cast(pl.String)


def _binary_text(df: pl.DataFrame, col: str) -> pl.Expr:
    """A binary column as text: its bytes must be UTF-8 (an InputDataError names the first row
    whose bytes are not)."""
    try:
        df[col].to_arrow().cast(pa.string())  # Arrow checks the bytes; Polars' cast fails without saying where
    except pa.ArrowInvalid:
        for i, value in enumerate(df[col].to_list()):
            try:
                if value is not None:
                    value.decode("utf-8")
            except UnicodeDecodeError:
                raise InputDataError(f"expected text, found bytes that are not UTF-8 ({clip_text(repr(value))})",
                                     source=df[SOURCE_COL][i], column=col, row=df[ROW_COL][i]) from None
    return pl.col(col).cast(pl.String)


def _attributes(df: pl.DataFrame, columns: list[str]) -> pl.Expr:
    """Columns rendered as a list of "name: value" strings, nulls left out."""
    parts = []
    for name in columns:
        dtype = df.schema[name]
        if isinstance(dtype, pl.List):
            value = pl.col(name).cast(pl.List(pl.String)).list.join(", ")
        elif isinstance(dtype, pl.Struct):
            value = pl.col(name).struct.json_encode()
        elif dtype == pl.Binary:
            value = _binary_text(df, name)
        else:
            value = _plain_text(pl.col(name), dtype)
        parts.append(pl.when(value.is_not_null() & (value != "")).then(pl.lit(f"{name}: ") + value))
    if not parts:
        return pl.lit([], dtype=pl.List(pl.String))
    return pl.concat_list(parts).list.drop_nulls()


def _split_rejects(df: pl.DataFrame, reason: pl.Expr) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows where `reason` is non-null are rejected; the first failing check names the reason."""
    df = df.with_columns(reason.alias(_REASON))
    return df.filter(pl.col(_REASON).is_null()).drop(_REASON), df.filter(pl.col(_REASON).is_not_null())


def rejects_table(rejected: pl.DataFrame) -> pa.Table:
    """Rejected rows in the published rejects schema, the raw row kept as JSON."""
    if rejected.height == 0:
        return schemas.REJECTS.empty_table()
    data_cols = [c for c in rejected.columns if c not in (*_BOOKKEEPING, _REASON)]
    raw = pl.struct([_raw_value(rejected, c) for c in data_cols])
    out = rejected.select(
        pl.col(SOURCE_COL).alias("source"),
        pl.col(ROW_COL).cast(pl.Int64).alias("row"),
        pl.col(_REASON).alias("reason"),
        raw.struct.json_encode().alias("raw"),
    )
    return out.to_arrow().cast(schemas.REJECTS)


def reject_counts_by_kind(rejects: pa.Table) -> dict[str, int]:
    """Reject counts by kind (the part of each reason before its first ':'), for manifests."""
    counts: dict[str, int] = {}
    for reason in rejects.column("reason").to_pylist():
        kind = reason.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _raw_value(df: pl.DataFrame, col: str) -> pl.Expr:
    """A column as the rejects' `raw` JSON holds it: scalars as text (bytes as hex: they need
    not be UTF-8), nested values as JSON."""
    dtype = df.schema[col]
    if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
        return pl.col(col)
    if dtype == pl.Binary:
        return pl.col(col).bin.encode("hex")
    return pl.col(col).cast(pl.String)


def _first_reason(*checks: tuple[pl.Expr, pl.Expr]) -> pl.Expr:
    expr = pl.lit(None, dtype=pl.String)
    for condition, message in reversed(checks):
        expr = pl.when(condition).then(message).otherwise(expr)
    return expr


def _raise_on_duplicates(df: pl.DataFrame, col: str, what: str) -> None:
    dup = df.filter(pl.col(col).is_duplicated()).sort(col, SOURCE_COL, ROW_COL).head(2)
    if dup.height:
        a, b = dup.row(0, named=True), dup.row(1, named=True)
        raise InputDataError(
            f"{what} ids must be unique: {a[col]!r} appears at row {a[ROW_COL]} and again at "
            f"row {b[ROW_COL]} of {b[SOURCE_COL]}",
            source=a[SOURCE_COL],
            column=col,
            row=a[ROW_COL],
        )


# -- items ------------------------------------------------------------------------------


def validate_items(
    raw: pa.Table, *, location: str, attributes: list[str] | None, categories_delimiter: str
) -> Validated:
    df = pl.from_arrow(raw)
    _require_columns(df, ("item_id", "title"), "items", location)
    title = _as_text(df, "title", "text (a string or a list of strings)", location, join=" ")
    description = (
        _as_text(df, "description", "text", location, join=" ")
        if "description" in df.columns
        else pl.lit(None, dtype=pl.String)
    )
    year = _as_text(df, "year", "a year", location, join=" ") if "year" in df.columns else pl.lit(None, dtype=pl.String)
    categories = _categories(df, categories_delimiter, location)

    extra = [c for c in df.columns if c not in (*ITEM_CORE_COLUMNS, *_BOOKKEEPING)]
    if attributes is None:
        attr_cols = extra
    else:
        unknown = [c for c in attributes if c not in df.columns]
        if unknown:
            raise InputDataError(
                f"item_text.attributes names columns the items table does not have "
                f"(it has {[c for c in df.columns if c not in _BOOKKEEPING]})",
                source=_first_source(df, location),
                column=unknown[0],
            )
        attr_cols = list(attributes)

    df = df.with_columns(
        pl.col("item_id").str.strip_chars().alias("item_id"),
        title.str.strip_chars().alias("__title"),
    )
    clean, rejected = _split_rejects(
        df,
        _first_reason(
            (_empty_id("item_id"), pl.lit("null id: item_id is null or empty")),
            (pl.col("__title").is_null() | (pl.col("__title") == ""), pl.lit("empty title: title is null or empty")),
        ),
    )
    _raise_on_duplicates(clean, "item_id", "item")
    table = clean.select(
        pl.col("item_id"),
        pl.col("__title").alias("title"),
        year.str.strip_chars().alias("year"),
        categories.alias("categories"),
        description.str.strip_chars().alias("description"),
        _attributes(clean, attr_cols).alias("attributes"),
    ).sort("item_id")
    return Validated(table.to_arrow().cast(schemas.ITEMS), rejects_table(rejected.drop("__title")), raw.num_rows)


def _categories(df: pl.DataFrame, delimiter: str, location: str) -> pl.Expr:
    if "categories" not in df.columns:
        return pl.lit(None, dtype=pl.List(pl.String))
    dtype = df.schema["categories"]
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.List(pl.String))
    if dtype == pl.String:
        split = pl.col("categories").str.split(delimiter)
    elif isinstance(dtype, pl.List) and dtype.inner == pl.String:
        split = pl.col("categories")
    else:
        raise _type_error(df, "categories", f"a list of strings or a {delimiter!r}-delimited string", location)
    return split.list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))


# -- interactions -----------------------------------------------------------------------


# Timestamps are seconds within years 1 to 9999 (what ISO-8601 and every datetime type
# can write); outside it a value is most likely in milliseconds or corrupt.
MIN_TIMESTAMP = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z


def _timestamp_seconds(df: pl.DataFrame, location: str) -> tuple[pl.Expr, pl.Expr]:
    """Timestamps as int64 seconds: from integers, floats (floored), Arrow timestamps or text.

    Returns (seconds, out of range): seconds is null where the cell does not parse (text
    that is neither a number nor ISO-8601, NaN) or falls outside MIN_TIMESTAMP..MAX_TIMESTAMP,
    and the second expression says which of those were out of range. The caller rejects both.
    """
    dtype = df.schema["timestamp"]
    col = pl.col("timestamp")
    if dtype.is_integer():
        value = col
    elif dtype.is_decimal():
        value = col.cast(pl.Float64)
    elif dtype.is_float():
        value = pl.when(~col.is_nan()).then(col)
    elif isinstance(dtype, pl.Datetime):
        value = col.dt.epoch("s")
    elif dtype == pl.Date:
        value = col.cast(pl.Datetime("us")).dt.epoch("s")
    elif dtype == pl.String:
        text = col.str.strip_chars()
        as_number = text.cast(pl.Float64, strict=False)
        as_datetime = text.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s").cast(pl.Float64)
        value = pl.coalesce(pl.when(~as_number.is_nan()).then(as_number), as_datetime)
    else:
        raise _type_error(df, "timestamp", "int64 seconds, an Arrow timestamp, or text", location)
    in_range = (value >= MIN_TIMESTAMP) & (value <= MAX_TIMESTAMP)
    # Non-strict: values outside int64 only occur outside the range, where the result is unused.
    seconds = pl.when(in_range).then(value.floor().cast(pl.Int64, strict=False) if not dtype.is_integer()
                                     else value.cast(pl.Int64, strict=False))
    return seconds, value.is_not_null() & ~in_range


def _timestamp_columns(df: pl.DataFrame, location: str) -> tuple[pl.Expr, pl.Expr]:
    seconds, out_of_range = _timestamp_seconds(df, location)
    return seconds.alias("__ts"), out_of_range.alias("__ts_range")


def _timestamp_reasons() -> tuple[tuple[pl.Expr, pl.Expr], ...]:
    """The timestamp checks of a log's rows, after `_timestamp_seconds` set __ts and __ts_range."""
    shown = pl.col("timestamp").cast(pl.String)
    return (
        (pl.col("timestamp").is_null(), pl.lit("null timestamp: timestamp is null")),
        (pl.col("__ts_range"), pl.lit("timestamp out of range: ") + shown
         + pl.lit(" is outside years 1 to 9999 as seconds (timestamps are seconds, not milliseconds)")),
        (pl.col("__ts").is_null(),
         pl.lit("unparsable timestamp: ") + shown + pl.lit(" is neither seconds nor an ISO-8601 date")),
    )


def validate_interactions(
    raw: pa.Table, *, location: str, item_ids: pa.Array | None, keep_extra: bool = False
) -> Validated:
    """The log in schemas.INTERACTIONS (timestamps as int64 seconds), bad rows rejected.

    `item_ids` is the valid catalogue; None skips the unknown-item check (splitting a log
    needs no catalogue). With `keep_extra`, the file's other columns (rating, event, ...)
    follow the contract columns unchanged.
    """
    df = pl.from_arrow(raw)
    _require_columns(df, ("user_id", "item_id", "timestamp"), "interactions", location)
    unknown_item = pl.lit(False)
    if item_ids is not None:
        known = pl.Series("known", item_ids.to_pylist(), dtype=pl.String)
        unknown_item = ~pl.col("item_id").is_in(known.implode())
    df = df.with_columns(
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        *_timestamp_columns(df, location),
    )
    clean, rejected = _split_rejects(
        df,
        _first_reason(
            (_empty_id("user_id"), pl.lit("null id: user_id is null or empty")),
            (_empty_id("item_id"), pl.lit("null id: item_id is null or empty")),
            (
                unknown_item,
                pl.lit("unknown item: item_id ") + pl.col("item_id") + pl.lit(" is not in the catalogue"),
            ),
            *_timestamp_reasons(),
        ),
    )
    extra = [c for c in df.columns if c not in (*schemas.INTERACTIONS.names, "__ts", "__ts_range", *_BOOKKEEPING)] \
        if keep_extra else []
    table = clean.select("user_id", "item_id", pl.col("__ts").alias("timestamp"), *extra).to_arrow()
    contract = table.select(schemas.INTERACTIONS.names).cast(schemas.INTERACTIONS)
    for name in extra:
        contract = contract.append_column(name, table.column(name))
    return Validated(contract, rejects_table(rejected.drop("__ts", "__ts_range")), raw.num_rows)


def user_ids_in_log(raw: pa.Table) -> pa.Array:
    """Non-empty user ids that appear in the raw interaction log (valid rows or not).

    A user whose every interaction was rejected still gets recommendations (the
    popularity fallback): a person is never dropped because their rows were bad.
    """
    if "user_id" not in raw.column_names:
        return pa.array([], pa.string())
    df = pl.from_arrow(raw.select(["user_id"]))
    ids = df.select(pl.col("user_id").str.strip_chars()).filter(~_empty_id("user_id")).unique()
    return ids.to_series().to_arrow().cast(pa.string())


# -- users ------------------------------------------------------------------------------


def validate_users(raw: pa.Table, *, location: str) -> Validated:
    df = pl.from_arrow(raw)
    _require_columns(df, ("user_id",), "users", location)
    attr_cols = [c for c in df.columns if c not in ("user_id", *_BOOKKEEPING)]
    df = df.with_columns(pl.col("user_id").str.strip_chars())
    clean, rejected = _split_rejects(
        df, _first_reason((_empty_id("user_id"), pl.lit("null id: user_id is null or empty")))
    )
    _raise_on_duplicates(clean, "user_id", "user")
    table = clean.select("user_id", _attributes(clean, attr_cols).alias("attributes")).sort("user_id")
    return Validated(table.to_arrow().cast(schemas.USERS), rejects_table(rejected), raw.num_rows)


# -- feedback ---------------------------------------------------------------------------

FEEDBACK_EVENTS = ("impression", "click", "dismiss")


def validate_feedback(raw: pa.Table, *, location: str, item_ids: pa.Array) -> Validated:
    """The feedback log in schemas.FEEDBACK, bad rows rejected.

    The interaction log's row rules apply (ids, a known item, a parsable timestamp), plus the
    event: trimmed and lower-cased, it must be one of FEEDBACK_EVENTS.
    """
    df = pl.from_arrow(raw)
    _require_columns(df, ("user_id", "item_id", "timestamp", "event"), "feedback", location)
    event = _as_text(df, "event", "text", location, join=" ")
    known = pl.Series("known", item_ids.to_pylist(), dtype=pl.String)
    df = df.with_columns(
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        *_timestamp_columns(df, location),
        event.str.strip_chars().str.to_lowercase().alias("__event"),
    )
    clean, rejected = _split_rejects(
        df,
        _first_reason(
            (_empty_id("user_id"), pl.lit("null id: user_id is null or empty")),
            (_empty_id("item_id"), pl.lit("null id: item_id is null or empty")),
            (
                ~pl.col("item_id").is_in(known.implode()),
                pl.lit("unknown item: item_id ") + pl.col("item_id") + pl.lit(" is not in the catalogue"),
            ),
            *_timestamp_reasons(),
            (_empty_id("__event"), pl.lit("null event: event is null or empty")),
            (
                ~pl.col("__event").is_in(list(FEEDBACK_EVENTS)),
                pl.lit("unknown event: ") + pl.col("__event") + pl.lit(f" is not one of {', '.join(FEEDBACK_EVENTS)}"),
            ),
        ),
    )
    table = clean.select("user_id", "item_id", pl.col("__ts").alias("timestamp"), pl.col("__event").alias("event"))
    return Validated(
        table.to_arrow().cast(schemas.FEEDBACK), rejects_table(rejected.drop("__ts", "__ts_range", "__event")), raw.num_rows
    )
