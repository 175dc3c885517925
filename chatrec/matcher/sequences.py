"""Users' item sequences as flat arrays: training examples, histories and targets from them.

A sequence is a user's distinct items in time order, oldest first (a repeated item counts
at its most recent time; ties as in chatrec.histories, read newest first). Stored CSR-style
(`offsets`, `items`) so a batch of histories is one vectorised gather, whatever the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass(frozen=True)
class Sequences:
    user_ids: list[str]  # sorted
    offsets: np.ndarray  # (n_users + 1,) int64: user u's items are items[offsets[u]:offsets[u+1]]
    items: np.ndarray  # (total,) int64 item rows, oldest first within a user
    n_items: int

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n_users,)

    def histories(self, users: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
        """The up to `max_len` items before position `ends` of each user, newest first.

        users (b,), ends (b,) positions within each sequence -> (b, max_len) rows, -1 padded.
        """
        steps = np.arange(max_len)  # (L,)
        pos = ends[:, None] - 1 - steps[None, :]  # (b, L): newest first
        flat = self.offsets[users][:, None] + pos  # (b, L)
        return np.where(pos >= 0, self.items[np.clip(flat, 0, len(self.items) - 1)], -1)

    def latest(self, max_len: int) -> np.ndarray:
        """Every user's most recent `max_len` items, newest first: (n_users, max_len)."""
        users = np.arange(len(self.user_ids))
        return self.histories(users, self.lengths, max_len)

    def examples(self) -> tuple[np.ndarray, np.ndarray]:
        """(user, position) of every item that has at least one item before it.

        The example predicts items[offsets[user] + position] from the items before it.
        """
        per_user = np.maximum(self.lengths - 1, 0)  # (n_users,) examples per user
        users = np.repeat(np.arange(len(per_user)), per_user)  # (n_examples,)
        first = np.repeat(np.cumsum(per_user) - per_user, per_user)  # (n_examples,)
        positions = np.arange(len(users)) - first + 1  # (n_examples,) 1 .. len - 1
        return users, positions

    def targets(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self.items[self.offsets[users] + positions]  # (b,)

    def pair_keys(self) -> np.ndarray:
        """Sorted user * n_items + item for every (user, item) in the sequences."""
        users = np.repeat(np.arange(len(self.user_ids)), self.lengths)
        return np.unique(users * self.n_items + self.items)


def build_sequences(log: pl.DataFrame, item_rows: dict[str, int], n_items: int) -> Sequences:
    """log (user_id, item_id, timestamp) -> sequences over the item rows of `item_rows`.

    Interactions with items outside `item_rows` are left out (the caller has validated the
    log against the same catalogue, so there are none in a run).
    """
    rows = pl.DataFrame({"item_id": list(item_rows), "row": list(item_rows.values())}, schema={"item_id": pl.String, "row": pl.Int64})
    ordered = (
        log.select("user_id", "item_id", "timestamp")
        .join(rows, on="item_id", how="inner")
        # Oldest first; among equal timestamps the largest item_id is oldest, so that read
        # newest first the order is the one chatrec.histories serves (ties by item_id).
        .sort(["user_id", "timestamp", "item_id"], descending=[False, False, True])
        .unique(["user_id", "row"], keep="last", maintain_order=True)
    )
    grouped = ordered.group_by("user_id", maintain_order=True).agg(pl.col("row")).sort("user_id")
    lengths = grouped["row"].list.len().to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = grouped["row"].explode().to_numpy().astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
    return Sequences(grouped["user_id"].to_list(), offsets, items, n_items)


def hold_out_latest(seq: Sequences, share: float, min_length: int) -> tuple[Sequences, dict[int, np.ndarray]]:
    """Split each user's latest `share` of items (at least 1) off as validation targets.

    Users shorter than `min_length` keep everything for training. Returns the training
    sequences and {user index: held-out item rows}.
    """
    lengths = seq.lengths
    held = np.where(lengths >= min_length, np.maximum(1, np.floor(share * lengths).astype(np.int64)), 0)
    keep = lengths - held
    starts = seq.offsets[:-1]
    mask = np.zeros(len(seq.items), dtype=bool)
    for u in np.flatnonzero(keep):
        mask[starts[u] : starts[u] + keep[u]] = True
    targets = {int(u): seq.items[starts[u] + keep[u] : seq.offsets[u + 1]] for u in np.flatnonzero(held)}
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    return Sequences(seq.user_ids, offsets, seq.items[mask], seq.n_items), targets
