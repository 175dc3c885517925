"""A clean interaction log as a sparse binary user x item matrix, with recency positions.

Codes are positions in the sorted id lists: user code u is `user_ids[u]`, item code i is
`item_ids[i]`, so a lower item code means a smaller item_id and ties broken by code are
ties broken by item_id. Each (user, item) pair counts once, at its most recent position,
as in chatrec.histories: position 0 is the user's newest distinct item, timestamps tied
are ordered by item_id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp


@dataclass(frozen=True)
class InteractionMatrix:
    user_ids: np.ndarray  # (n_users,) object: user_id strings, sorted
    item_ids: np.ndarray  # (n_items,) object: item_id strings, sorted
    X: sp.csr_matrix  # (n_users, n_items) float32, 1.0 per distinct pair, column indices sorted per row
    positions: np.ndarray  # (nnz,) int32, aligned with X.indices: 0 = the user's newest distinct item

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def item_codes(self, item_ids) -> np.ndarray:
        """(n,) item ids -> (n,) item codes, -1 for ids outside the universe."""
        return _codes(self.item_ids, item_ids)

    def user_codes(self, user_ids) -> np.ndarray:
        """(n,) user ids -> (n,) user codes, -1 for users without interactions."""
        return _codes(self.user_ids, user_ids)

    def recency_weights(self, tau: float) -> sp.csr_matrix:
        """(n_users, n_items) X with each entry weighted exp(-position / tau); tau=inf gives X."""
        if np.isinf(tau):
            return self.X
        data = np.exp(-self.positions / tau).astype(np.float32)  # (nnz,)
        return sp.csr_matrix((data, self.X.indices, self.X.indptr), shape=self.X.shape)

    def history_entries(self, user: int) -> np.ndarray:
        """Positions in X.data / X.indices of one user's distinct items, newest first."""
        start, end = self.X.indptr[user], self.X.indptr[user + 1]
        return start + np.argsort(self.positions[start:end], kind="stable")

    def history(self, user: int) -> np.ndarray:
        """Item codes of one user's distinct items, newest first."""
        return self.X.indices[self.history_entries(user)]


def _codes(sorted_ids: np.ndarray, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=object)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    at = np.searchsorted(sorted_ids, ids)  # (n,)
    at = np.minimum(at, len(sorted_ids) - 1)
    return np.where(sorted_ids[at] == ids, at, -1).astype(np.int64)


def build_interaction_matrix(
    log: pa.Table | pl.DataFrame, *, item_universe: list[str] | None = None
) -> InteractionMatrix:
    """log (user_id, item_id, timestamp int64) -> InteractionMatrix.

    `item_universe` lists the items the matrix has columns for (default: the log's items);
    items of the universe nobody interacted with get empty columns. A log item outside the
    universe is a ValueError: the caller decides which items exist, not this function.
    """
    df = log if isinstance(log, pl.DataFrame) else pl.from_arrow(log)
    df = df.select("user_id", "item_id", "timestamp")
    if item_universe is None:
        items = df["item_id"].unique().sort()
    else:
        items = pl.Series("item_id", item_universe, dtype=pl.String).unique().sort()
        outside = df.filter(~pl.col("item_id").is_in(items.implode()))["item_id"].unique().sort()
        if len(outside):
            raise ValueError(
                f"item_universe misses {len(outside)} item(s) of the log, e.g. {outside.head(3).to_list()}; "
                "the universe must contain every logged item"
            )
    users = df["user_id"].unique().sort()

    # One row per distinct (user, item), at its most recent position.
    distinct = (
        df.sort(["user_id", "timestamp", "item_id"], descending=[False, True, False])
        .unique(["user_id", "item_id"], keep="first", maintain_order=True)
        .with_columns(pl.int_range(pl.len()).over("user_id").cast(pl.Int32).alias("position"))
    )
    coded = (
        distinct.join(users.to_frame().with_row_index("u"), on="user_id")
        .join(items.to_frame().with_row_index("i"), on="item_id")
        .sort(["u", "i"])
    )
    u = coded["u"].to_numpy().astype(np.int64)  # (nnz,)
    i = coded["i"].to_numpy().astype(np.int32)  # (nnz,)
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=len(users)), out=indptr[1:])
    X = sp.csr_matrix(
        (np.ones(len(i), dtype=np.float32), i, indptr), shape=(len(users), len(items))
    )
    return InteractionMatrix(
        user_ids=np.asarray(users.to_list(), dtype=object),
        item_ids=np.asarray(items.to_list(), dtype=object),
        X=X,
        positions=coded["position"].to_numpy().astype(np.int32),
    )
