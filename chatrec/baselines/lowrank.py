"""A low-rank linear autoencoder, recency-weighted: EASE's partner for catalogues EASE cannot hold.

With X the binary (n_users, n_items) matrix and X^T X ~ V diag(s^2) V^T its top-r eigenpairs,

    B = (X^T X + lambda I)^-1 X^T X ~ V diag(s^2 / (s^2 + lambda)) V^T        (rank r)
    score(u, j) = w_u . B[:, j] = p_u . q_j
    q_j = V_j * sqrt(s^2 / (s^2 + lambda))          (r,) the item's factor
    p_u = sum_h w_uh q_h                            (r,) the user's: recency-weighted, as in ease-recency

This is the ridge-regularised linear autoencoder (Steck 2020, "Autoencoders that don't
overfit towards the identity") in the subspace of its r strongest directions: PureSVD with
EASE's shrinkage. Unlike EASE it holds (n_items, r) numbers, not (n_items, n_items), and
a score is one inner product of two r-vectors, so the fused top-K stays one FAISS search
over concatenated vectors (chatrec.matcher.fusion). An item nobody interacted with has an
empty column, so q_j = 0: as in EASE, no collaborative score.

The eigenpairs come from a randomised block power iteration on X^T X (Halko, Martinsson &
Tropp 2011, algorithm 4.4 and 5.3) that touches X only as X^T (X Q), one pass over the log
per iteration, in bounded blocks of users: memory is O(n_items * r), whatever the user
count. Tuned: rank, lambda, tau.
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
from chatrec.baselines.item_item import NO_LINK_REASON, history_because

# Power iterations and the block's width of the randomised eigensolver. Interaction data's
# spectrum decays slowly, so the block is twice the rank: on MovieLens-100K at rank 128 the
# 128th eigenvalue comes out within 0.2% (16 extra columns, the textbook default: 8%).
POWER_ITERATIONS = 4
WIDTH_PER_RANK = 2
# Users per block of X in a pass: bounds the (block, width) float64 product.
USERS_PER_PASS = 65_536
SEED = 0
# Terms below this share of a user's largest one are float32 rounding, not a link.
ROUNDING = 1e-5


def gram_eigenpairs(X: sp.csr_matrix, rank: int, *, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(n_users, n_items) X -> the top `rank` eigenpairs of X^T X: vectors (n_items, r) with
    orthonormal columns and eigenvalues s^2 (r,), descending. r is capped at n_items."""
    n_users, n_items = X.shape
    rank = min(rank, n_items)
    width = min(WIDTH_PER_RANK * rank, n_items)
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n_items, width)))[0]  # (n_items, width)

    def gram_times(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """X^T X Q (n_items, width) and Q^T X^T X Q (width, width), one pass over X."""
        out, small = np.zeros_like(Q), np.zeros((Q.shape[1], Q.shape[1]))
        for start in range(0, n_users, USERS_PER_PASS):
            rows = X[start:start + USERS_PER_PASS]  # (block, n_items)
            XQ = rows @ Q  # (block, width)
            out += rows.T @ XQ
            small += XQ.T @ XQ
        return out, small

    for _ in range(POWER_ITERATIONS):
        Q = np.linalg.qr(gram_times(Q)[0])[0]  # (n_items, width)
    _, small = gram_times(Q)  # (width, width): X^T X restricted to span(Q)
    values, vectors = scipy.linalg.eigh(small)  # ascending
    order = np.argsort(-values, kind="stable")[:rank]
    # Deterministic signs: each vector's largest entry positive.
    V = Q @ vectors[:, order]  # (n_items, r)
    flip = np.sign(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])])
    flip[flip == 0] = 1.0
    return V * flip[None, :], np.maximum(values[order], 0.0)


def item_factors(V: np.ndarray, s2: np.ndarray, l2: float) -> np.ndarray:
    """Eigenpairs (n_items, r), (r,) -> q (n_items, r) float32: V shrunk by s^2 / (s^2 + lambda), square-rooted."""
    total = s2 + l2  # (r,) 0 only for an empty direction with lambda 0: it stays empty
    shrink = np.sqrt(np.divide(s2, total, out=np.zeros_like(s2), where=total > 0))  # (r,)
    return (V * shrink[None, :]).astype(np.float32)


class LowRankModel:
    """FittedBaseline: scores are p_u . q_j, p_u the recency-weighted sum of the user's q_h."""

    def __init__(self, matrix: InteractionMatrix, factors: np.ndarray, weights: sp.csr_matrix) -> None:
        self.matrix = matrix
        self.factors = factors  # (n_items, r) q
        # (n_users, n_items): w_h per history entry; the same indptr/indices as matrix.X
        self.weights = weights

    @property
    def rank(self) -> int:
        return int(self.factors.shape[1])

    def user_factors(self, users: np.ndarray) -> np.ndarray:
        """(n,) user codes -> (n, r) float32 p_u."""
        return np.asarray(self.weights[users] @ self.factors, dtype=np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors(users) @ self.factors.T  # (n, r) @ (r, n_items) -> (n, n_items)

    def because(self, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """The history item with the largest term w_h q_h . q_j (ties: the newer item); -1
        when no term is positive. An exact zero of the full-rank form comes out as rounding
        noise: below ROUNDING of the user's largest term it is not a link."""
        return history_because(self.matrix, self.weights, users, codes,
                               lambda history, targets: self.factors[history] @ self.factors[targets].T,
                               rounding=ROUNDING)

    def reasons(self, items: np.ndarray, because: np.ndarray, titles: Mapping[str, str] | None) -> list[str]:
        ids = self.matrix.item_ids
        return [NO_LINK_REASON if b < 0 else f"often together with {titles.get(ids[b], ids[b]) if titles else ids[b]}"
                for b in because.tolist()]


class LowRankRecency(Baseline):
    name = "lowrank-recency"
    params = {
        "rank": Param(int, 1),
        "l2": Param(float, 0.0),
        "tau": Param(float, 0.0, low_open=True),
    }
    # 128 directions and EASE's middle lambda; tau as ease-recency's default. Tuning replaces them.
    defaults = {"rank": 128, "l2": 100.0, "tau": 20.0}

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> LowRankModel:
        V, s2 = gram_eigenpairs(matrix.X, params["rank"])
        return LowRankModel(matrix, item_factors(V, s2, params["l2"]), matrix.recency_weights(params["tau"]))

    def fit_grid(
        self, matrix: InteractionMatrix, grid: list[dict[str, Any]]
    ) -> Iterator[tuple[dict[str, Any], LowRankModel]]:
        # One eigensolve at the grid's largest rank: a smaller rank takes its leading columns.
        if not grid:
            return
        V, s2 = gram_eigenpairs(matrix.X, max(p["rank"] for p in grid))
        weights: dict[float, sp.csr_matrix] = {}
        for params in grid:
            r = min(params["rank"], V.shape[1])
            tau = params["tau"]
            if tau not in weights:
                weights[tau] = matrix.recency_weights(tau)
            yield params, LowRankModel(matrix, item_factors(V[:, :r], s2[:r], params["l2"]), weights[tau])


# Tuned in stages (chatrec.baselines.tuning.STAGED_GRIDS): tau at the default rank and lambda,
# then rank x lambda at the best tau; ties go to the earlier point. Lambda is on the scale of
# the eigenvalues of X^T X, as EASE's is on the scale of its entries; tau as in ease-recency.
STAGES: list[dict[str, list[Any]]] = [
    {"tau": [1.0, 3.0, 10.0, 20.0, 50.0, math.inf]},
    {"rank": [64, 128, 256, 512], "l2": [10.0, 100.0, 1000.0, 10000.0]},
]
