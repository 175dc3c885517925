"""Item-kNN on cosine co-occurrence (Sarwar et al. 2001; Deshpande & Karypis 2004).

    C = X^T X                          (n_items, n_items) co-occurrence counts
    S[i, j] = C[i, j] / (sqrt(n_i n_j) + shrink),  n_i = C[i, i] users of item i
    S[i, i] = 0, and each row i keeps only its `neighbors` largest entries (sparse)
    score(u, j) = x_u . S[:, j]        each history item passes its neighbours its similarity

Shrinkage damps similarities built on few users. Tuned: `neighbors`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from chatrec.baselines.base import Baseline, Param
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.baselines.item_item import ItemItemModel


def cosine_similarity(X: sp.csr_matrix, *, shrink: float = 0.0) -> sp.csr_matrix:
    """(n_users, n_items) binary -> (n_items, n_items) float32 cosine, diagonal zero."""
    C = (X.T @ X).tocsr().astype(np.float32)  # (n_items, n_items)
    n = C.diagonal()  # (n_items,) users per item
    norm = np.sqrt(n)  # (n_items,)
    rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))  # (nnz,)
    C.data /= norm[rows] * norm[C.indices] + shrink  # n_i > 0 wherever C has an entry
    C.setdiag(0.0)
    C.eliminate_zeros()
    return C


def keep_top_neighbors(S: sp.csr_matrix, neighbors: int | None) -> sp.csr_matrix:
    """Each row's `neighbors` largest entries (ties: lower item code); None keeps all."""
    if neighbors is None:
        return S
    rows = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))  # (nnz,)
    order = np.lexsort((S.indices, -S.data, rows))  # by row, then value descending, then code
    rank = np.arange(len(order)) - S.indptr[rows[order]]  # (nnz,) position within the row
    keep = order[rank < neighbors]
    return sp.csr_matrix((S.data[keep], (rows[keep], S.indices[keep])), shape=S.shape)


class ItemKNN(Baseline):
    name = "itemknn"
    params = {
        "neighbors": Param(int, 1, none_means="all"),
        "shrink": Param(float, 0.0),
    }
    # 100 neighbours is the usual item-kNN default (Sarwar et al.; RecBole's `k`); no
    # shrinkage, because cosine on binary data already discounts popular items.
    defaults = {"neighbors": 100, "shrink": 0.0}

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> ItemItemModel:
        S = cosine_similarity(matrix.X, shrink=params["shrink"])
        return ItemItemModel(matrix, keep_top_neighbors(S, params["neighbors"]), matrix.X)

    def fit_grid(
        self, matrix: InteractionMatrix, grid: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], ItemItemModel]]:
        # The full similarity depends on shrink only: computed once per shrink, pruned per point.
        full: dict[float, sp.csr_matrix] = {}
        for params in grid:
            shrink = params["shrink"]
            if shrink not in full:
                full = {shrink: cosine_similarity(matrix.X, shrink=shrink)}
            yield params, ItemItemModel(matrix, keep_top_neighbors(full[shrink], params["neighbors"]), matrix.X)
