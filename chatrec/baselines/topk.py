"""Top-K item codes per user from a dense score matrix, seen items excluded.

The result always has shape (n, K): when a user has fewer than K unseen items the row is
padded with code -1 (score -inf). Ties break by item code, i.e. by item_id, so the same
scores always give the same lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# Users are scored in batches so memory does not grow with the user count: a batch holds a
# dense (users, n_items) float32 score matrix (plus temporaries of the same size). 256 MiB
# for it is ~65,000 item-users: 1,300 users of a 50,000-item catalogue.
SCORE_BUFFER_BYTES = 256 * 2**20
# Small catalogues would allow huge batches; past a few thousand users BLAS is saturated
# and a larger batch only delays the first written rows. MovieLens-100K (943 users) is one batch.
MAX_USERS_PER_BATCH = 4096


def users_per_batch(n_items: int) -> int:
    """Users whose (users, n_items) float32 scores fit SCORE_BUFFER_BYTES (at least 1)."""
    return int(max(1, min(MAX_USERS_PER_BATCH, SCORE_BUFFER_BYTES // (4 * max(n_items, 1)))))


@dataclass(frozen=True)
class TopK:
    codes: np.ndarray  # (n, K) int64 item codes, best first; -1 pads short rows
    scores: np.ndarray  # (n, K) float32; -inf where codes is -1


def top_k_excluding(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> TopK:
    """(n, n_items) scores, (n, n_items) seen pattern -> the K best unseen items per row.

    `scores` is overwritten (seen items become -inf): it is the caller's scratch buffer.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    n, n_items = scores.shape
    rows = np.repeat(np.arange(n), np.diff(seen.indptr))  # (nnz,)
    scores[rows, seen.indices] = -np.inf
    kk = min(k, n_items)
    if n == 0 or kk == 0:
        return _pad(np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32), k)

    # Any kk largest per row; argpartition picks arbitrarily among items tied at the border.
    part = np.argpartition(scores, n_items - kk, axis=1)[:, n_items - kk :]  # (n, kk)
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)  # (n,) the kk-th best score
    n_at_least = (scores >= kth[:, None]).sum(axis=1)  # (n,)
    for r in np.flatnonzero(n_at_least > kk):  # border ties: take the lowest codes among them
        above = np.flatnonzero(scores[r] > kth[r])
        tied = np.flatnonzero(scores[r] == kth[r])[: kk - len(above)]
        part[r] = np.concatenate([above, tied])
    values = np.take_along_axis(scores, part, axis=1)  # (n, kk)
    order = np.lexsort((part, -values), axis=1)  # score descending, then code ascending
    codes = np.take_along_axis(part, order, axis=1).astype(np.int64)  # (n, kk)
    values = np.take_along_axis(values, order, axis=1).astype(np.float32)  # (n, kk)
    codes[np.isneginf(values)] = -1  # only seen items are -inf: the row ran out of unseen items
    return _pad(codes, values, k)


def _pad(codes: np.ndarray, values: np.ndarray, k: int) -> TopK:
    n, have = codes.shape
    if have == k:
        return TopK(codes, values)
    return TopK(
        np.hstack([codes, np.full((n, k - have), -1, np.int64)]),
        np.hstack([values, np.full((n, k - have), -np.inf, np.float32)]),
    )
