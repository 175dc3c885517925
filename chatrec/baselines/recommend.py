"""A fitted baseline's top-K for many users, in bounded batches, as codes or as output rows.

Every user's own interactions (the fitted matrix's row) are excluded. Rows come out in the
published schema (chatrec.schemas.RECOMMENDATIONS), ranks 1..n per user with n = K unless
the user has fewer than K unseen items: padding never becomes a row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from chatrec import schemas
from chatrec.baselines.base import FittedBaseline
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.baselines.popularity import PopularityModel
from chatrec.baselines.topk import TopK, top_k_excluding, users_per_batch


def _batches(model: FittedBaseline, users: np.ndarray, k: int) -> Iterator[tuple[np.ndarray, TopK]]:
    step = users_per_batch(model.matrix.n_items)
    for start in range(0, len(users), step):
        batch = users[start : start + step]  # (b,) user codes
        scores = model.scores(batch)  # (b, n_items)
        yield batch, top_k_excluding(scores, model.matrix.X[batch], k)


def recommend_codes(model: FittedBaseline, users: np.ndarray, k: int) -> np.ndarray:
    """(n,) user codes -> (n, k) recommended item codes, best first, -1 padded."""
    parts = [top.codes for _, top in _batches(model, np.asarray(users, dtype=np.int64), k)]
    return np.vstack(parts) if parts else np.zeros((0, k), dtype=np.int64)


def recommendation_tables(
    model: FittedBaseline,
    *,
    top_k: int,
    strategy: str,
    run_id: str,
    titles: Mapping[str, str] | None = None,
) -> Iterator[pa.Table]:
    """Every user of the fitted matrix: one RECOMMENDATIONS table per batch of users."""
    matrix = model.matrix
    for batch, top in _batches(model, np.arange(matrix.n_users), top_k):
        because = model.because(batch, top.codes)  # (b, K)
        yield _rows(model, matrix.user_ids[batch], top, because, strategy=strategy, run_id=run_id, titles=titles)


def popularity_fallback_table(
    matrix: InteractionMatrix, user_ids: list[str], *, top_k: int, run_id: str
) -> pa.Table:
    """Users with no valid interaction (every row of theirs rejected): the K most popular
    items, as chatrec's own fallback gives them (strategy "popularity", nothing excluded)."""
    model = PopularityModel(matrix)
    n = len(user_ids)
    nothing_seen = sp.csr_matrix((n, matrix.n_items), dtype=np.float32)
    top = top_k_excluding(model.scores(np.zeros(n, np.int64)), nothing_seen, top_k)  # (n, K)
    because = np.full(top.codes.shape, -1, dtype=np.int64)  # (n, K)
    users = np.asarray(user_ids, dtype=object)
    return _rows(model, users, top, because, strategy="popularity", run_id=run_id, titles=None)


def _rows(
    model: FittedBaseline,
    user_ids: np.ndarray,
    top: TopK,
    because: np.ndarray,
    *,
    strategy: str,
    run_id: str,
    titles: Mapping[str, str] | None,
) -> pa.Table:
    """(n,) user ids, (n, K) top-K and because codes -> RECOMMENDATIONS rows, padding dropped."""
    item_ids = model.matrix.item_ids
    valid = top.codes >= 0  # (n, K) False only for padding
    items = top.codes[valid]  # (m,) user by user, in rank order
    because_flat = because[valid]  # (m,)
    m = len(items)
    return pa.table(
        {
            "user_id": pa.array(np.repeat(user_ids, valid.sum(axis=1)).tolist(), pa.string()),
            "rank": pa.array(np.nonzero(valid)[1] + 1, pa.int32()),  # padding only ends a row
            "item_id": pa.array(item_ids[items].tolist(), pa.string()),
            "score": pa.array(top.scores[valid], pa.float32()),
            "because_item_id": pa.array([item_ids[b] if b >= 0 else None for b in because_flat.tolist()], pa.string()),
            "reason": pa.array(model.reasons(items, because_flat, titles), pa.string()),
            "strategy": pa.array([strategy] * m, pa.string()),
            "run_id": pa.array([run_id] * m, pa.string()),
            "explanation": pa.nulls(m, pa.string()),  # no language model in a baseline
        },
        schema=schemas.RECOMMENDATIONS,
    )
