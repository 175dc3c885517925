"""Ragged per-user item rows (seen items, recent items) as two flat arrays.

The top-K stage receives them as Arrow list columns; reading them as offsets + values costs
a few vectorised copies per block, where a Python list of one numpy array per user costs a
conversion per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class RowLists:
    """User i's rows are values[offsets[i]:offsets[i + 1]]."""

    offsets: np.ndarray  # (n + 1,) int64, offsets[0] == 0
    values: np.ndarray  # (offsets[-1],) int64

    @classmethod
    def from_arrow(cls, column: pa.Array | pa.ChunkedArray) -> "RowLists":
        """A list<int> column (nulls read as empty lists)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)  # (n,)
        # flatten() honours a slice's offset and skips nulls, which hold no values.
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values)

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> "RowLists":
        lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))  # (n,)
        values = np.concatenate(arrays).astype(np.int64) if len(arrays) else np.zeros(0, np.int64)
        return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values)

    @classmethod
    def of(cls, rows: "RowLists | list[np.ndarray]") -> "RowLists":
        return rows if isinstance(rows, RowLists) else cls.from_arrays(rows)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n,)

    def owners(self) -> np.ndarray:
        """(total,) the user of each value."""
        return np.repeat(np.arange(len(self)), self.lengths())

    def subset(self, users: np.ndarray) -> "RowLists":
        """The lists of `users` (indices), in that order."""
        lengths = self.lengths()[users]  # (m,)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # Each picked value's position in `values`: its list's start plus its place in the list.
        starts = np.repeat(self.offsets[:-1][users], lengths)  # (t,)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # (t,)
        return RowLists(offsets, self.values[starts + within])

    def filter(self, keep: np.ndarray) -> "RowLists":
        """(total,) bool -> the same users, each keeping only its values where `keep`."""
        counts = np.bincount(self.owners()[keep], minlength=len(self))  # (n,)
        return RowLists(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), self.values[keep])

    def map(self, table: np.ndarray) -> "RowLists":
        """Every value v replaced by table[v]."""
        return RowLists(self.offsets, table[self.values])

    def padded(self, fill: int = -1) -> np.ndarray:
        """(n, longest) the lists left-aligned, `fill` past each one's end."""
        lengths = self.lengths()
        out = np.full((len(self), int(lengths.max(initial=0))), fill, dtype=np.int64)
        out[self.owners(), np.arange(len(self.values)) - np.repeat(self.offsets[:-1], lengths)] = self.values
        return out

    def to_arrays(self) -> list[np.ndarray]:
        return np.split(self.values, self.offsets[1:-1]) if len(self) else []
