"""User histories and item popularity from the validated interaction log.

A history lists item rows (positions in the item matrix), most recent first. Ties in
timestamp are broken by item_id so the same log always gives the same history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from chatrec import schemas


@dataclass(frozen=True)
class UserPopulation:
    """Who gets recommendations, and how.

    `histories`: schemas.HISTORIES, one row per user with at least one valid interaction.
    `fallback_user_ids`: users with no usable history (every interaction rejected, or only
    in the users table): they get the popularity fallback.
    """

    histories: pa.Table
    fallback_user_ids: pa.Array


def build_histories(
    interactions: pa.Table,
    item_text: pa.Table,
    *,
    max_items: int,
    extra_user_ids: pa.Array | None = None,
    users: pa.Table | None = None,
    profiles: pa.Table | None = None,
    excluded: pa.Table | None = None,
) -> UserPopulation:
    """interactions (schemas.INTERACTIONS) + item rows -> histories and fallback users.

    With a users table (schemas.USERS), each history carries the user's profile text; or
    with `profiles` (user_id, profile_text: `profile_texts` of one).
    `excluded` (user_id, item_id; e.g. dismissed items, chatrec.feedback) joins those users'
    `seen_rows`, so the top-K stage leaves the items out; it is not history.
    """
    rows = pl.from_arrow(item_text.select(["item_id", "row"]))
    log = pl.from_arrow(interactions).join(rows, on="item_id", how="inner")
    ordered = log.sort(["user_id", "timestamp", "item_id"], descending=[False, True, False])
    # A re-watched item counts once, at its most recent position.
    distinct = ordered.unique(["user_id", "row"], keep="first", maintain_order=True)
    histories = (
        distinct.group_by("user_id", maintain_order=True)
        .agg(
            pl.col("row").head(max_items).alias("recent_rows"),
            pl.col("row").sort().alias("seen_rows"),
            pl.len().cast(pl.Int32).alias("history_len"),
        )
        .sort("user_id")
    )
    if excluded is not None and excluded.num_rows:
        extra_rows = (
            pl.from_arrow(excluded.select(["user_id", "item_id"]))
            .join(rows, on="item_id", how="inner")
            .group_by("user_id")
            .agg(pl.col("row").alias("__excluded"))
        )
        histories = histories.join(extra_rows, on="user_id", how="left", maintain_order="left").with_columns(
            pl.concat_list("seen_rows", pl.col("__excluded").fill_null(pl.lit([], dtype=pl.List(pl.Int32))))
            .list.unique()
            .list.sort()
            .alias("seen_rows")
        ).drop("__excluded")
    if users is not None and users.num_rows:
        profiles = profile_texts(users)
    elif profiles is not None and profiles.num_rows:
        profiles = pl.from_arrow(profiles.select(["user_id", "profile_text"]))
    else:
        profiles = None
    if profiles is not None:
        histories = histories.join(profiles, on="user_id", how="left", maintain_order="left")
    else:
        histories = histories.with_columns(pl.lit(None, dtype=pl.String).alias("profile_text"))
    histories = histories.with_columns(pl.lit(None, dtype=pl.Int64).alias("history_key"))
    histories = histories.to_arrow().cast(schemas.HISTORIES)
    fallback = pa.array([], pa.string())
    if extra_user_ids is not None and len(extra_user_ids):
        extra = pc.unique(extra_user_ids.cast(pa.string()).drop_null())
        extra = extra.take(pc.array_sort_indices(extra))
        fallback = extra.filter(pc.invert(pc.is_in(extra, value_set=histories.column("user_id"))))
    return UserPopulation(histories=histories, fallback_user_ids=fallback)


def history_keys(histories: pa.Table, item_keys: np.ndarray, tower_key: str) -> np.ndarray:
    """(n_users,) int64 fingerprints of each user's vector inputs: the tower (`tower_key`),
    the recent items in order (`item_keys`: (n_items,) uint64 per catalogue row, from item id
    and text hash) and the profile text. Equal keys mean the user stage would compute the
    same vector again."""
    recent = histories.column("recent_rows").combine_chunks()
    offsets = recent.offsets.to_numpy().astype(np.int64)  # (n + 1,)
    rows = recent.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # (total,)
    position = np.arange(len(rows)) - np.repeat(offsets[:-1], np.diff(offsets))  # (total,) 0 = newest
    with np.errstate(over="ignore"):
        # Order matters: each item's key is mixed with its position before the per-user sum.
        mixed = _mix64(item_keys[rows] ^ _mix64(position.astype(np.uint64) + np.uint64(1)))  # (total,)
        sums = np.zeros(len(offsets) - 1, np.uint64)
        np.add.at(sums, np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), mixed)
        profiles = np.array([_key64(p or "") for p in histories.column("profile_text").to_pylist()], np.uint64)
        keys = _mix64(sums ^ _mix64(profiles) ^ np.uint64(_key64(tower_key)))
    return keys.view(np.int64)


def item_keys(item_text: pa.Table) -> np.ndarray:
    """(n_items,) uint64 per catalogue row from its id and text hash."""
    return np.array(
        [_key64(f"{i}\x00{h}") for i, h in zip(item_text.column("item_id").to_pylist(),
                                              item_text.column("text_sha256").to_pylist())],
        np.uint64,
    )


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the output (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def profile_texts(users: pa.Table) -> pl.DataFrame:
    """users (schemas.USERS) -> user_id, profile_text: the attributes joined by ". "."""
    return pl.from_arrow(users.select(["user_id", "attributes"])).select(
        "user_id", pl.col("attributes").list.join(". ").alias("profile_text")
    )


def item_popularity(interactions: pa.Table, item_text: pa.Table) -> pa.Table:
    """item_id, row, users (distinct users per item), share (users / all users), ranked.

    Ordered by users descending, then item_id: the popularity fallback's ranking.
    """
    log = pl.from_arrow(interactions)
    counts = log.group_by("item_id").agg(pl.col("user_id").n_unique().alias("users"))
    rows = pl.from_arrow(item_text.select(["item_id", "row"])).join(counts, on="item_id", how="inner")
    return rank_popularity(rows.select("row", "users").to_arrow(), item_text, log["user_id"].n_unique())


def rank_popularity(users_per_row: pa.Table, item_text: pa.Table, n_users: int) -> pa.Table:
    """`item_popularity` from its counts: (row, users) distinct users per catalogue row (rows
    absent: none) and the number of users in the log."""
    ranked = (
        pl.from_arrow(item_text.select(["item_id", "row"]))
        .join(pl.from_arrow(users_per_row).select(pl.col("row").cast(pl.Int32), pl.col("users").cast(pl.Int64)),
              on="row", how="left")
        .with_columns(pl.col("users").fill_null(0))
        .with_columns((pl.col("users") / max(n_users, 1)).cast(pl.Float32).alias("share"))
        .sort(["users", "item_id"], descending=[True, False])
    )
    return ranked.to_arrow()
