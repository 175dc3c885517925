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
        out = np.full(codes.shape, -1, dtype=np.int64)  # (n, K)
        for row, user in enumerate(users):
            entries = self.matrix.history_entries(int(user))  # (h,) newest first
            targets = codes[row][codes[row] >= 0]  # (k,)
            if len(entries) == 0 or len(targets) == 0:
                continue
            history = self.matrix.X.indices[entries]  # (h,) item codes
            w = self.weights.data[entries]  # (h,) weights share X's sparsity pattern
            if sp.issparse(self.item_matrix):
                block = self.item_matrix[history][:, targets].toarray()  # (h, k)
            else:
                block = self.item_matrix[np.ix_(history, targets)]  # (h, k)
            terms = w[:, None] * block  # (h, k)
            best = np.argmax(terms, axis=0)  # (k,) first (newest) of ties
            linked = terms[best, np.arange(len(targets))] > 0  # (k,)
            out[row, : len(targets)] = np.where(linked, history[best], -1)
        return out

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
