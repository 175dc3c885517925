"""User histories and item popularity from the validated interaction log.

A history lists item rows (positions in the item matrix), most recent first. Ties in
timestamp are broken by item_id so the same log always gives the same history.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

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
) -> UserPopulation:
    """interactions (schemas.INTERACTIONS) + item rows -> histories and fallback users.

    With a users table (schemas.USERS), each history carries the user's profile text.
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
    if users is not None and users.num_rows:
        profiles = pl.from_arrow(users).select(
            "user_id", pl.col("attributes").list.join(". ").alias("profile_text")
        )
        histories = histories.join(profiles, on="user_id", how="left", maintain_order="left")
    else:
        histories = histories.with_columns(pl.lit(None, dtype=pl.String).alias("profile_text"))
    known = set(histories["user_id"].to_list())
    extra = [] if extra_user_ids is None else extra_user_ids.to_pylist()
    fallback = sorted({u for u in extra if u is not None and u not in known})
    return UserPopulation(
        histories=histories.to_arrow().cast(schemas.HISTORIES),
        fallback_user_ids=pa.array(fallback, pa.string()),
    )


def item_popularity(interactions: pa.Table, item_text: pa.Table) -> pa.Table:
    """item_id, row, users (distinct users per item), share (users / all users), ranked.

    Ordered by users descending, then item_id: the popularity fallback's ranking.
    """
    log = pl.from_arrow(interactions)
    n_users = max(log["user_id"].n_unique(), 1)
    counts = log.group_by("item_id").agg(pl.col("user_id").n_unique().alias("users"))
    ranked = (
        pl.from_arrow(item_text.select(["item_id", "row"]))
        .join(counts, on="item_id", how="left")
        .with_columns(pl.col("users").fill_null(0))
        .with_columns((pl.col("users") / n_users).cast(pl.Float32).alias("share"))
        .sort(["users", "item_id"], descending=[True, False])
    )
    return ranked.to_arrow()
