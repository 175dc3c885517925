"""Scoring with an item x item matrix M, shared by item-kNN (M = S) and EASE (M = B).

A user's score for item i is sum over history items h of w_h * M[h, i], w_h the history
weight (1, or the recency weight). The recommendation's `because` item is the history item
with the largest term w_h * M[h, i] (ties go to the newer item); when no term is positive,
nothing in the history points to the item and `because` is left empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

from chatrec.baselines.interaction_matrix import InteractionMatrix

NO_LINK_REASON = "filler: nothing in your history points to it"


class ItemItemModel:
    def __init__(
        self, matrix: InteractionMatrix, item_matrix: np.ndarray | sp.csr_matrix, weights: sp.csr_matrix
    ) -> None:
        self.matrix = matrix
        self.item_matrix = item_matrix  # (n_items, n_items): row h = what history item h passes on
        # (n_users, n_items): w_h per history entry; the same indptr/indices as matrix.X
        self.weights = weights

    def scores(self, users: np.ndarray) -> np.ndarray:
        scores = self.weights[users] @ self.item_matrix  # (n, n_items) @ (n_items, n_items) -> (n, n_items)
        if sp.issparse(scores):
            scores = scores.toarray()
        return np.asarray(scores, dtype=np.float32)

    def because(self, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        def pair_scores(history: np.ndarray, targets: np.ndarray) -> np.ndarray:
            if sp.issparse(self.item_matrix):
                return self.item_matrix[history][:, targets].toarray()  # (h, k)
            return self.item_matrix[np.ix_(history, targets)]  # (h, k)

        return history_because(self.matrix, self.weights, users, codes, pair_scores)

    def reasons(self, items: np.ndarray, because: np.ndarray, titles: Mapping[str, str] | None) -> list[str]:
        ids = self.matrix.item_ids
        out = []
        for b in because.tolist():
            if b < 0:
                out.append(NO_LINK_REASON)
            else:
                name = titles.get(ids[b], ids[b]) if titles else ids[b]
                out.append(f"often together with {name}")
        return out


def history_because(matrix: InteractionMatrix, weights: sp.csr_matrix, users: np.ndarray, codes: np.ndarray,
                    pair_scores, rounding: float = 0.0) -> np.ndarray:
    """(n,) user codes, (n, K) recommended codes (-1 = none) -> (n, K) the history item with
    the largest term w_h * pair_scores(h, j) for each (newest of ties), -1 where no term is
    above `rounding` times the user's largest term (0: above zero). `pair_scores(history (h,),
    targets (k,))` gives the model's (h, k) item-to-item scores; `weights` shares X's pattern."""
    out = np.full(codes.shape, -1, dtype=np.int64)  # (n, K)
    for row, user in enumerate(users):
        entries = matrix.history_entries(int(user))  # (h,) newest first
        targets = codes[row][codes[row] >= 0]  # (k,)
        if len(entries) == 0 or len(targets) == 0:
            continue
        history = matrix.X.indices[entries]  # (h,) item codes
        terms = weights.data[entries][:, None] * pair_scores(history, targets)  # (h, k)
        best = np.argmax(terms, axis=0)  # (k,) first (newest) of ties
        floor = rounding * float(np.abs(terms).max()) if rounding else 0.0
        linked = terms[best, np.arange(len(targets))] > floor  # (k,)
        out[row, : len(targets)] = np.where(linked, history[best], -1)
    return out
