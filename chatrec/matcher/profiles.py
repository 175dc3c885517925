"""User profile vectors for the matcher's user tower.

A user's profile text is the users table's attributes joined (the text the histories carry
in `profile_text`, chatrec.histories.profile_texts); the item encoder turns each distinct
text into a vector once, so the same vector reaches training, the fusion's tuning and the
user stage. A user without a profile gets a zero row, which the tower masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class UserProfiles:
    row_of_text: dict[str, int]  # profile text -> row of `vectors`
    vectors: np.ndarray  # (n_texts, text_dim) float32, unit rows
    # user_id -> profile text, for training; the user stage reads each history's own text.
    text_of_user: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def of_texts(self, texts: list[str | None]) -> np.ndarray:
        """n profile texts (None: no profile) -> (n, text_dim), zero rows where there is none."""
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, text_dim)
        rows = np.array([self.row_of_text.get(t, -1) if t else -1 for t in texts], np.int64)  # (n,)
        present = rows >= 0
        out[present] = self.vectors[rows[present]]
        return out

    def of_users(self, user_ids: list[str]) -> np.ndarray:
        """(n, text_dim) for `user_ids`, through each user's profile text."""
        return self.of_texts([self.text_of_user.get(u) for u in user_ids])

    def for_serving(self) -> "UserProfiles":
        """Without the per-user map: what the user stage's actors need."""
        return replace(self, text_of_user={})
