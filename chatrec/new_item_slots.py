"""Exploration slots: the last places of each list kept for items without interactions.

An item nobody has interacted with yet has no collaborative signal, so a ranking learned
from interactions rarely lifts it into a top-K list; and an item never shown gathers no
interactions. `retrieval.new_item_slots` = S breaks that loop: every list holds at least S
such items (fewer only when the user has fewer unseen ones). Where the ranking already holds
fewer than S, the user's best-scoring missing new items replace the lowest-ranked items
with interactions, at the end of the list. Each list stays sorted by score: an item that
was not in the list scores below every item it displaces.
"""

from __future__ import annotations

import numpy as np

SLOT_STRATEGY = "new-item"


def reserve_new_item_slots(
    rows: np.ndarray, scores: np.ndarray, new_rows: np.ndarray, new_scores: np.ndarray, slots: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's top-K with at least `slots` new items.

    rows (n, k) int64 item rows by rank (-1 where the catalogue ran out), scores (n, k);
    new_rows (m,) the rows of the items without interactions; new_scores (n, m) each user's
    score for them, -inf where the item may not be recommended (seen, excluded).
    Returns rows (n, k), scores (n, k) and placed (n, k) bool: True where a slot put the item.
    """
    n, k = rows.shape
    placed = np.zeros((n, k), bool)  # (n, k)
    if slots <= 0 or len(new_rows) == 0 or n == 0:
        return rows, scores, placed
    position = np.full(int(max(rows.max(initial=-1), new_rows.max())) + 1, -1, np.int64)
    position[new_rows] = np.arange(len(new_rows))  # item row -> its column in new_scores
    listed = np.where(rows >= 0, position[np.maximum(rows, 0)], -1)  # (n, k) column of a listed new item, else -1
    is_new = listed >= 0  # (n, k)
    # A new item already in the list is not a candidate for a slot.
    candidates = np.array(new_scores, dtype=np.float64, copy=True)  # (n, m)
    users, ranks = np.nonzero(is_new)
    candidates[users, listed[users, ranks]] = -np.inf
    depth = min(slots, candidates.shape[1])
    best = np.argpartition(-candidates, depth - 1, axis=1)[:, :depth]  # (n, depth) unordered
    best_scores = np.take_along_axis(candidates, best, axis=1)  # (n, depth)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best, best_scores = np.take_along_axis(best, order, axis=1), np.take_along_axis(best_scores, order, axis=1)
    # Only a full list can lack an unseen new item: a short one already holds every unseen item.
    have = is_new.sum(axis=1)  # (n,)
    need = np.where((rows >= 0).all(axis=1), np.clip(min(slots, k) - have, 0, None), 0)  # (n,)
    need = np.minimum(need, np.isfinite(best_scores).sum(axis=1))  # (n,)
    rows, scores = rows.copy(), scores.copy()
    for u in np.flatnonzero(need):
        # Drop the `need[u]` lowest-ranked items with interactions; keep the rest in order.
        known = np.flatnonzero(~is_new[u])  # (k - new,)
        keep = np.ones(k, bool)
        keep[known[len(known) - need[u]:]] = False
        extra = new_rows[best[u, : need[u]]]  # (need,)
        rows[u] = np.concatenate([rows[u][keep], extra])
        scores[u] = np.concatenate([scores[u][keep], best_scores[u, : need[u]]])
        placed[u, k - need[u]:] = True
    return rows, scores, placed


def slot_candidate_scores(scores: np.ndarray, new_rows: np.ndarray, seen: list[np.ndarray]) -> np.ndarray:
    """scores (n, m) of the new items for n users, seen[u] user u's seen rows -> the same
    with -inf where the user has seen the item."""
    out = np.array(scores, dtype=np.float64, copy=True)  # (n, m)
    for u, rows in enumerate(seen):
        if len(rows):
            out[u, np.isin(new_rows, rows)] = -np.inf
    return out


def items_without_interactions(item_ids, interacted) -> np.ndarray:
    """The catalogue rows (ascending) of the items in `item_ids` that no id in
    `interacted` names."""
    interacted = set(interacted)
    return np.array([row for row, item in enumerate(item_ids) if item not in interacted], dtype=np.int64)
