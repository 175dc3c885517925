"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders"), plain and recency-weighted.

Closed form, with X the binary (n_users, n_items) matrix:

    G = X^T X + lambda I               (n_items, n_items)
    P = G^-1
    B = -P / diag(P)  (column j divided by -P[j, j]),   B[j, j] = 0
    score(u, j) = x_u . B[:, j]

"ease-recency" keeps B (fitted on the binary X) but weights the user's row: the item at
position p of the user's own distinct items (0 = newest) weighs exp(-p / tau). Small tau
recommends what goes with the last few items; tau = inf is plain EASE. Tuned: lambda (both),
tau (ease-recency).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from chatrec.baselines.base import Baseline, Param
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.baselines.item_item import ItemItemModel
from chatrec.errors import ConfigError

# EASE holds dense (n_items, n_items) matrices. At the peak, G (float64, 8 bytes a cell) is
# filled while the sparse X^T X still exists (up to 12 bytes a cell when nearly every pair
# co-occurs: float64 value + int32 column index): 20 bytes a cell. The inverse is taken in
# place and B is kept as float32. 8 GiB for this allows sqrt(8 GiB / 20 B) = 20,724 items.
EASE_MEMORY_LIMIT_BYTES = 8 * 2**30
EASE_BYTES_PER_CELL = 20
MAX_EASE_ITEMS = math.isqrt(EASE_MEMORY_LIMIT_BYTES // EASE_BYTES_PER_CELL)


def check_ease_size(n_items: int, *, max_items: int = MAX_EASE_ITEMS) -> None:
    if n_items > max_items:
        need = EASE_BYTES_PER_CELL * n_items**2 / 2**30
        limit = EASE_BYTES_PER_CELL * max_items**2 / 2**30
        raise ConfigError(
            f"EASE needs dense (n_items x n_items) matrices: {n_items:,} items would need "
            f"{need:.1f} GiB, above the limit of {limit:.1f} GiB ({max_items:,} items); "
            "use the itemknn baseline (sparse) for a catalogue this large"
        )


def ease_weights(X: sp.csr_matrix, l2: float) -> np.ndarray:
    """(n_users, n_items) binary X, lambda -> (n_items, n_items) float32 B, zero diagonal."""
    n_items = X.shape[1]
    check_ease_size(n_items)
    X64 = X.astype(np.float64)
    G = (X64.T @ X64).toarray()  # (n_items, n_items) co-occurrence counts
    G[np.diag_indices(n_items)] += l2
    P = scipy.linalg.inv(G, overwrite_a=True, check_finite=False)  # (n_items, n_items)
    del G
    P /= -np.diag(P)[None, :]  # B[i, j] = -P[i, j] / P[j, j]
    np.fill_diagonal(P, 0.0)
    return P.astype(np.float32)


# lambda is on the scale of the co-occurrence counts in G: MovieLens-100K-sized logs tune to
# a few hundred (see tuning.GRIDS); Steck used 500 for MovieLens-20M.
DEFAULT_L2 = 400.0


class Ease(Baseline):
    name = "ease"
    params = {"l2": Param(float, 0.0, low_open=True)}
    defaults = {"l2": DEFAULT_L2}

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> ItemItemModel:
        return ItemItemModel(matrix, ease_weights(matrix.X, params["l2"]), matrix.X)


class EaseRecency(Baseline):
    name = "ease-recency"
    params = {"l2": Param(float, 0.0, low_open=True), "tau": Param(float, 0.0, low_open=True)}
    # tau = 20: the newest item weighs 1, the 20th newest 1/e; a user's last few dozen items
    # set the list, older ones still count a little. Tuning on a validation set replaces it.
    defaults = {"l2": DEFAULT_L2, "tau": 20.0}

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> ItemItemModel:
        B = ease_weights(matrix.X, params["l2"])
        return ItemItemModel(matrix, B, matrix.recency_weights(params["tau"]))

    def fit_grid(
        self, matrix: InteractionMatrix, grid: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], ItemItemModel]]:
        # B depends on lambda only: one inversion per lambda, reused for every tau after it.
        l2, B = None, None
        for params in grid:
            if params["l2"] != l2:
                l2, B = params["l2"], None
                B = ease_weights(matrix.X, l2)
            yield params, ItemItemModel(matrix, B, matrix.recency_weights(params["tau"]))
