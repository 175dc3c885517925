"""Most popular first: items ranked by how many distinct users interacted with them.

The same list for everyone (minus what each user has seen), ties by item_id; the score and
the reason are those of chatrec's own popularity fallback (chatrec.recommender).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from chatrec.baselines.base import Baseline
from chatrec.baselines.interaction_matrix import InteractionMatrix


class PopularityModel:
    def __init__(self, matrix: InteractionMatrix) -> None:
        self.matrix = matrix
        # X is binary, one entry per distinct pair: a column's entry count is its user count.
        self.users = np.bincount(matrix.X.indices, minlength=matrix.n_items)  # (n_items,)
        self.share = (self.users / max(matrix.n_users, 1)).astype(np.float32)  # (n_items,)

    def scores(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.share, (len(users), self.matrix.n_items)).copy()  # (n, n_items)

    def because(self, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return np.full(codes.shape, -1, dtype=np.int64)  # (n, K): popularity has no "because"

    def reasons(self, items: np.ndarray, because: np.ndarray, titles: Mapping[str, str] | None) -> list[str]:
        return [f"popular: {c} users interacted with it" for c in self.users[items].tolist()]


class Popularity(Baseline):
    name = "popularity"

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> PopularityModel:
        return PopularityModel(matrix)
