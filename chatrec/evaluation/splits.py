"""Cut an interaction log into train / valid / test for offline evaluation.

Methods, each a deterministic pure function of the clean log (validate_interactions' table):
- user-time:   per user, the earliest rows train and the latest test, sized by ratios.
- global-time: one timeline for everyone: train before a cutoff, test from it on.
- leave-last:  per user, the last n rows test and the n before them valid.
Any split can then make a seeded fraction of the items cold: all their rows go to test.

"Chronological" always means sorted by (timestamp, item_id, original row order), so ties
fall the same way on every run. Each part keeps the input's schema (contract columns
first, extra columns such as rating after them); rows are ordered by user, then in time.

write_split publishes train/valid/test.parquet, rejects.parquet, cold_items.parquet (with
cold items) and split.json into a hidden sibling directory, then renames it into place.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from chatrec import schemas
from chatrec.config import TableInput
from chatrec.errors import ConfigError, InputDataError, PublishError
from chatrec.manifest import utc_now
from chatrec.readers import read_table
from chatrec.validation import Validated, validate_interactions

METHODS = ("user-time", "global-time", "leave-last")
PARTS = ("train", "valid", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)  # RecBole's usual 8:1:1

# Ratio x count is floored; the slack keeps float error from flooring 0.29 * 100
# (= 28.999999999999996) to 28.
_EPS = 1e-9
_ORDER, _RANK, _COUNT, _PART = "__order", "__rank", "__count", "__part"
_TRAIN, _VALID, _TEST = 0, 1, 2

_RATIOS_RULE = "--ratios must be 3 non-negative numbers train,valid,test that sum to 1 with train > 0"


@dataclass(frozen=True)
class Split:
    """Three parts in the input log's schema, plus what produced them (split.json's core)."""

    train: pa.Table
    valid: pa.Table
    test: pa.Table
    info: dict[str, Any]
    cold_items: tuple[str, ...] = ()  # sorted; every row of these items is in test


# -- arguments --------------------------------------------------------------------------


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1), checked."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{_RATIOS_RULE}, got {text!r}") from None
    return _check_ratios(values, shown=text)


def _check_ratios(ratios: Sequence[float], *, shown: object) -> tuple[float, float, float]:
    try:
        values = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise ConfigError(f"{_RATIOS_RULE}, got {shown!r}") from None
    ok = (
        len(values) == 3
        and all(v >= 0 for v in values)  # False for NaN too
        and math.isclose(sum(values), 1.0, abs_tol=1e-6)
        and values[0] > 0
    )
    if not ok:
        raise ConfigError(f"{_RATIOS_RULE}, got {shown!r}")
    return values  # type: ignore[return-value]


def parse_cutoff(value: int | str) -> int:
    """A cutoff as int seconds since the epoch, from an int, integer text or ISO-8601 text.

    ISO text without a time zone is UTC, as validation reads timestamps.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            "--cutoff must be integer seconds since the epoch or an ISO-8601 date/time "
            f"(e.g. 2020-01-31 or 2020-01-31T12:00:00Z), got {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return math.floor(moment.timestamp())


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n must be an integer >= 1, got {n!r}")


def _check_fraction(fraction: float) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"--cold-items must be a fraction in [0, 1), got {fraction!r}")


def _check_seed(seed: int) -> None:
    # numpy's default_rng takes non-negative integers only.
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")


@dataclass(frozen=True)
class SplitSpec:
    """What a split was asked for, checked on creation, before any data is read.

    `ratios`, `cutoff` and `n` are None when not given (each method then uses its default);
    giving one to a method that does not use it is an error, not a silent no-op.
    """

    method: str
    ratios: tuple[float, float, float] | None = None
    cutoff: int | str | None = None  # int seconds or ISO-8601; stored as int seconds
    n: int | None = None
    cold_items: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--by must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.cutoff is not None and self.method != "global-time":
            raise ConfigError(f"--cutoff applies only to --by global-time, got --by {self.method}")
        if self.n is not None and self.method != "leave-last":
            raise ConfigError(f"--n applies only to --by leave-last, got --by {self.method}")
        if self.ratios is not None and self.method == "leave-last":
            raise ConfigError("--ratios does not apply to --by leave-last: it takes --n")
        if self.ratios is not None and self.cutoff is not None:
            raise ConfigError("--by global-time takes --cutoff or --ratios, not both")
        if self.ratios is not None:
            object.__setattr__(self, "ratios", _check_ratios(self.ratios, shown=self.ratios))
        if self.cutoff is not None:
            object.__setattr__(self, "cutoff", parse_cutoff(self.cutoff))
        if self.n is not None:
            _check_n(self.n)
        _check_fraction(self.cold_items)
        _check_seed(self.seed)


# -- split methods ----------------------------------------------------------------------


def split_log(log: pa.Table | pl.DataFrame, spec: SplitSpec) -> Split:
    """Split by `spec.method`, then make `spec.cold_items` of the items cold."""
    if spec.method == "user-time":
        split = split_user_time(log, spec.ratios or DEFAULT_RATIOS)
    elif spec.method == "global-time":
        split = split_global_time(log, cutoff=spec.cutoff, ratios=spec.ratios or DEFAULT_RATIOS)
    else:
        split = split_leave_last(log, spec.n or 1)
    return make_items_cold(split, spec.cold_items, seed=spec.seed)


def split_user_time(log: pa.Table | pl.DataFrame, ratios: Sequence[float] = DEFAULT_RATIOS) -> Split:
    """Per user, the latest rows test, the ones before them valid, the earliest train.

    A user with c rows gets floor(r_valid * c) valid and floor(r_test * c) test rows, as in
    RecBole. A part whose ratio is > 0 but got 0 rows gets 1 as long as train keeps at
    least 1, test before valid: with 8:1:1 a user of 2 rows is 1 train + 1 test, of 3 rows
    1 + 1 + 1, and a user of 1 row keeps it in train.
    """
    _, r_valid, r_test = _check_ratios(ratios, shown=ratios)
    df, schema = _chronological(log)
    count = pl.col(_COUNT)
    n_test = (count * r_test + _EPS).floor().cast(pl.Int64)
    n_valid = (count * r_valid + _EPS).floor().cast(pl.Int64)
    if r_test > 0:
        n_test = pl.when((n_test == 0) & (count - n_valid >= 2)).then(1).otherwise(n_test)
    if r_valid > 0:
        n_valid = pl.when((n_valid == 0) & (count - n_test >= 2)).then(1).otherwise(n_valid)
    df = df.with_columns(_label_from_end(n_valid, n_test))
    return _partition(df, schema, _info("user-time", ratios=list(ratios)))


def split_leave_last(log: pa.Table | pl.DataFrame, n: int = 1) -> Split:
    """Per user, the last n rows test and the n before them valid, the rest train.

    A user with fewer than 2n + 1 rows fills test first, keeps at least 1 row in train,
    and valid gets what is left: with n = 1, 1 row is train only, 2 rows train + test;
    with n = 2, 4 rows are 1 train + 1 valid + 2 test.
    """
    _check_n(n)
    df, schema = _chronological(log)
    count = pl.col(_COUNT)
    n_test = pl.min_horizontal(pl.lit(n, pl.Int64), count - 1)
    n_valid = pl.min_horizontal(pl.lit(n, pl.Int64), count - 1 - n_test)
    df = df.with_columns(_label_from_end(n_valid, n_test))
    return _partition(df, schema, _info("leave-last", n=n))


def split_global_time(
    log: pa.Table | pl.DataFrame,
    *,
    cutoff: int | str | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
) -> Split:
    """One timeline for all users: train before a cut point, test from it on.

    With `cutoff` (seconds or ISO-8601): train = timestamp < cutoff, test = the rest, valid
    empty, `ratios` unused. Without: of the N rows in time order, the last
    floor(r_test * N) would be test and the floor(r_valid * N) before them valid (as in
    user-time); each part then starts at the timestamp of its first such row, so rows
    sharing a timestamp land in the same part. Ties at a cut point go to the later part,
    which can make a part a few rows larger or smaller than its ratio.
    """
    df, schema = _chronological(log)
    ts = pl.col("timestamp")
    if cutoff is not None:
        cut = parse_cutoff(cutoff)
        df = df.with_columns(pl.when(ts < cut).then(_TRAIN).otherwise(_TEST).alias(_PART))
        return _partition(df, schema, _info("global-time", cutoff=cut))

    _, r_valid, r_test = _check_ratios(ratios, shown=ratios)
    times = df["timestamp"].sort()  # (N,)
    total = len(times)
    n_test = math.floor(r_test * total + _EPS)
    n_valid = math.floor(r_valid * total + _EPS)
    # A part that would start past the last row is empty: it has no cut point (None).
    valid_from = times[max(total - n_test - n_valid, 0)] if n_test + n_valid else None
    test_from = times[total - n_test] if n_test else None
    label = pl.lit(_TRAIN)
    if valid_from is not None:
        label = pl.when(ts >= valid_from).then(_VALID).otherwise(label)
    if test_from is not None:
        label = pl.when(ts >= test_from).then(_TEST).otherwise(label)
    df = df.with_columns(label.alias(_PART))
    cutoffs = {"valid_from": valid_from, "test_from": test_from}
    return _partition(df, schema, _info("global-time", ratios=list(ratios), cutoffs=cutoffs))


def make_items_cold(split: Split, fraction: float, *, seed: int = 0) -> Split:
    """Make a seeded `fraction` of the log's items cold: every row of theirs moves to test.

    round(fraction x items) items are drawn with numpy's default_rng(seed) from the sorted
    item ids of all three parts, so the same log and seed give the same cold set.
    Afterwards no cold item is in train or valid.
    """
    _check_fraction(fraction)
    _check_seed(seed)
    info = {**split.info, "seed": seed, "cold_fraction": fraction}
    if fraction == 0:
        return Split(split.train, split.valid, split.test, {**info, "cold_items": 0})

    parts = (split.train, split.valid, split.test)
    items = sorted(set().union(*(p.column("item_id").to_pylist() for p in parts)))
    n_cold = math.floor(fraction * len(items) + 0.5)  # nearest, halves up
    picked = np.random.default_rng(seed).choice(len(items), size=n_cold, replace=False)
    cold = tuple(sorted(items[i] for i in picked))
    cold_set = pa.array(cold, pa.string())

    def is_cold(table: pa.Table) -> pa.ChunkedArray:
        return pc.is_in(table.column("item_id"), value_set=cold_set)

    moved = [p.filter(is_cold(p)) for p in (split.train, split.valid)]
    test = pa.concat_tables([split.test, *moved])
    # Stable sort: rows equal on these keys keep test-then-train-then-valid order.
    test = test.sort_by([("user_id", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending")])
    train, valid = (p.filter(pc.invert(is_cold(p))) for p in (split.train, split.valid))
    return Split(train, valid, test, {**info, "cold_items": len(cold)}, cold)


def _chronological(log: pa.Table | pl.DataFrame) -> tuple[pl.DataFrame, pa.Schema]:
    """The log sorted by user then in time, with each row's rank and its user's row count.

    Adds __order (original row position, the last tie-breaker), __rank (0 = the user's
    earliest row) and __count (the user's rows). Also returns the schema the parts keep.
    """
    if isinstance(log, pa.Table):
        df, schema = pl.from_arrow(log), log.schema
    elif isinstance(log, pl.DataFrame):
        df = log
        extra = [c for c in log.columns if c not in schemas.INTERACTIONS.names]
        schema = pa.schema([*schemas.INTERACTIONS, *log.select(extra).head(0).to_arrow().schema])
    else:
        raise TypeError(f"log must be a pyarrow Table or a polars DataFrame, got {type(log).__name__}")
    missing = [c for c in schemas.INTERACTIONS.names if c not in df.columns]
    if missing:
        raise ValueError(f"log has no {missing} column(s); split the table validate_interactions returns")
    df = df.with_row_index(_ORDER).sort("user_id", "timestamp", "item_id", _ORDER)
    return df.with_columns(
        pl.int_range(pl.len()).over("user_id").alias(_RANK),
        pl.len().over("user_id").cast(pl.Int64).alias(_COUNT),
    ), schema


def _label_from_end(n_valid: pl.Expr, n_test: pl.Expr) -> pl.Expr:
    """Each user's last n_test rows test, the n_valid before them valid, the rest train."""
    from_end = pl.col(_COUNT) - pl.col(_RANK)  # 1 = the user's latest row
    return (
        pl.when(from_end <= n_test)
        .then(_TEST)
        .when(from_end <= n_test + n_valid)
        .then(_VALID)
        .otherwise(_TRAIN)
        .alias(_PART)
    )


def _partition(df: pl.DataFrame, schema: pa.Schema, info: dict[str, Any]) -> Split:
    parts = [
        df.filter(pl.col(_PART) == label).select(schema.names).to_arrow().cast(schema)
        for label in (_TRAIN, _VALID, _TEST)
    ]
    return Split(*parts, info=info)


def _info(method: str, **values: Any) -> dict[str, Any]:
    """Every key split.json describes the method with; None where it does not apply."""
    base = {"method": method, "ratios": None, "cutoff": None, "cutoffs": None, "n": None}
    return {**base, **values, "seed": None, "cold_fraction": 0.0, "cold_items": 0}


# -- reading and writing ----------------------------------------------------------------


def read_log(locations: Sequence[str], *, format: str = "auto", rename: dict[str, str] | None = None) -> Validated:
    """Read and validate an interaction log: no catalogue check, extra columns kept.

    Raises InputDataError naming the location when no valid row is left to split.
    """
    try:
        table = TableInput(path=list(locations), format=format, rename=rename or {})
    except ValidationError as e:
        raise ConfigError(
            f"invalid interactions input: {e.errors()[0]['msg']} (got {locations!r}, format {format!r})"
        ) from None
    raw = read_table(table, id_columns=("user_id", "item_id"))
    validated = validate_interactions(raw, location=table.display, item_ids=None, keep_extra=True)
    if validated.table.num_rows == 0:
        detail = f"{validated.rows_read} rows read, {validated.rejects.num_rows} rejected"
        if validated.rejects.num_rows:
            first = validated.rejects.slice(0, 1).to_pylist()[0]
            detail += f"; e.g. row {first['row']} of {first['source']}: {first['reason']}"
        raise InputDataError(f"no valid interactions to split ({detail})", source=table.display)
    return validated


def check_out_dir(out_dir: str | Path, *, force: bool = False) -> None:
    """Refuse an existing non-empty output directory unless `force` (it is then replaced)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PublishError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PublishError(
            f"--out {out} already exists and is not empty; choose another directory or pass --force to replace it"
        )


def split_manifest(split: Split, *, rejects: pa.Table, inputs: Sequence[str]) -> dict[str, Any]:
    """split.json: how the split was made, what each part holds, what was rejected."""

    def counts(table: pa.Table) -> dict[str, int]:
        return {
            "rows": table.num_rows,
            "users": len(pc.unique(table.column("user_id"))),
            "items": len(pc.unique(table.column("item_id"))),
        }

    # Reject kinds are the part of each reason before its first ':', as in the run manifest.
    by_reason = Counter(r.split(":", 1)[0] for r in rejects.column("reason").to_pylist())
    return {
        **split.info,
        "counts": {name: counts(getattr(split, name)) for name in PARTS},
        "rejects": {"total": rejects.num_rows, "by_reason": dict(sorted(by_reason.items()))},
        "inputs": list(inputs),
        "created_at": utc_now(),
    }


def write_split(
    split: Split,
    out_dir: str | Path,
    *,
    rejects: pa.Table | None = None,
    inputs: Sequence[str] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Publish a split to a local directory; it appears whole or not at all.

    Files go to a hidden sibling directory, split.json last, which is then renamed to
    `out_dir` (the commit step). valid.parquet is written even when empty, so readers learn
    its schema. Returns split.json's contents.
    """
    out = Path(out_dir)
    check_out_dir(out, force=force)
    rejects = schemas.REJECTS.empty_table() if rejects is None else rejects
    manifest = split_manifest(split, rejects=rejects, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        for name in PARTS:
            pq.write_table(getattr(split, name), staging / f"{name}.parquet")
        pq.write_table(rejects, staging / "rejects.parquet")
        if split.info.get("cold_fraction"):
            cold = pa.table({"item_id": pa.array(split.cold_items, pa.string())})
            pq.write_table(cold, staging / "cold_items.parquet")
        (staging / "split.json").write_text(json.dumps(manifest, indent=2) + "\n")
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def move_into_place(staging: Path, out: Path) -> None:
    """A staged directory renamed to `out`, replacing what is there only once it has taken its place."""
    if not out.exists():
        os.rename(staging, out)
        return
    # os.rename cannot replace a non-empty directory: move the old one aside first, and
    # put it back if the new one cannot take its place.
    old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old)


def print_split_summary(manifest: dict[str, Any], out_dir: str, console: Console | None = None) -> None:
    console = console or Console(markup=False)  # names and reasons come from user data
    table = Table(title=f"chatrec split ({manifest['method']})", title_justify="left")
    for col in ("part", "rows", "users", "items"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for name in PARTS:
        c = manifest["counts"][name]
        table.add_row(name, f"{c['rows']:,}", f"{c['users']:,}", f"{c['items']:,}")
    rejects = manifest["rejects"]
    table.add_row("rejects", f"{rejects['total']:,}", "", "")
    console.print(table)
    if manifest["cold_fraction"]:
        console.print(f"cold items: {manifest['cold_items']:,} (all their rows in test)")
    if rejects["total"]:
        console.print(f"rejects by reason: {rejects['by_reason']}")
    console.print(f"output: {out_dir}")
