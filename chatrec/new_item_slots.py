"""Exploration slots: the last places of each list kept for items without interactions.

An item nobody has interacted with yet has no collaborative signal, so a ranking learned
from interactions rarely lifts it into a top-K list; and an item never shown gathers no
interactions. `retrieval.new_item_slots` = S breaks that loop: every list holds at least S
such items (fewer only when the user has fewer unseen ones). Where the ranking already holds
fewer than S, the user's best-scoring missing new items replace the lowest-ranked items
with interactions, at the end of the list. Each list stays sorted by score: an item that
was not in the list scores below every item it displaces.

Only each user's best K + S new items are ever looked at (at most K of them can already be
in the list), so memory stays (users × (K + S)) however many new items there are.
"""

from __future__ import annotations

import numpy as np

SLOT_STRATEGY = "new-item"


def reserve_new_item_slots(
    rows: np.ndarray, scores: np.ndarray, is_new: np.ndarray, best_rows: np.ndarray, best_scores: np.ndarray,
    slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's top-K with at least `slots` new items.

    rows (n, k) int64 item rows by rank (-1 where the catalogue ran out), scores (n, k);
    is_new (n_items,) bool: the items without interactions; best_rows (n, c) each user's
    best unseen new items, best first (-1 where there are no more), best_scores (n, c).
    Returns rows (n, k), scores (n, k) and placed (n, k) bool: True where a slot put the item.
    """
    n, k = rows.shape
    placed = np.zeros((n, k), bool)  # (n, k)
    if slots <= 0 or n == 0 or not is_new.any():
        return rows, scores, placed
    listed_new = (rows >= 0) & is_new[np.maximum(rows, 0)]  # (n, k)
    # Only a full list can lack an unseen new item: a short one already holds every unseen item.
    need = np.where((rows >= 0).all(axis=1), np.clip(min(slots, k) - listed_new.sum(axis=1), 0, None), 0)  # (n,)
    rows, scores = rows.copy(), scores.copy()
    for u in np.flatnonzero(need):
        fresh = (best_rows[u] >= 0) & ~np.isin(best_rows[u], rows[u])  # (c,) not listed yet
        extra_rows, extra_scores = best_rows[u][fresh][: need[u]], best_scores[u][fresh][: need[u]]
        take = len(extra_rows)
        if take == 0:
            continue
        # Drop the `take` lowest-ranked items with interactions; keep the rest in order.
        known = np.flatnonzero(~listed_new[u])  # (k - listed new,)
        keep = np.ones(k, bool)
        keep[known[len(known) - take:]] = False
        rows[u] = np.concatenate([rows[u][keep], extra_rows])
        scores[u] = np.concatenate([scores[u][keep], extra_scores])
        placed[u, k - take:] = True
    return rows, scores, placed


def best_unseen(scores: np.ndarray, new_rows: np.ndarray, seen: list[np.ndarray], depth: int) -> tuple[np.ndarray, np.ndarray]:
    """scores (n, m) of the m new items at `new_rows` for n users, seen[u] user u's seen rows
    -> each user's best `depth` unseen ones: rows (n, depth) (-1 where there are no more) and
    their scores (n, depth), best first, ties by row."""
    scores = np.array(scores, dtype=np.float32, copy=True)  # (n, m)
    for u, rows in enumerate(seen):
        if len(rows):
            scores[u, np.isin(new_rows, rows)] = -np.inf
    depth = min(depth, scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth] if depth < scores.shape[1] else (
        np.tile(np.arange(scores.shape[1]), (len(scores), 1)))  # (n, depth) unordered
    top_scores = np.take_along_axis(scores, top, axis=1)  # (n, depth)
    order = np.lexsort((new_rows[top], -top_scores), axis=1)  # (n, depth) best first, ties by row
    top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
    return np.where(np.isfinite(top_scores), new_rows[top], -1), top_scores
