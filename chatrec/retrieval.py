"""Top-K retrieval over the item vectors with FAISS, excluding what each user has seen.

One contract: build over the item matrix, search user vectors for k with per-user
exclusions, always returning a fixed (n, k) shape. Behind it, an exact inner-product index
on CPU or GPU, chosen from capability flags computed in one place (`gpu_count`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from chatrec.errors import ConfigError
from chatrec.row_lists import RowLists

logger = logging.getLogger(__name__)

# FAISS GPU indexes select at most this many results per query.
GPU_MAX_K = 2048
# search_excluding's first search goes this far past k for every user. Users whose excluded
# items take more than that many of the places are searched again, as deep as they need; on
# synthetic 1M-user data (about 11 interactions a user) that is a few percent of them.
FIRST_DEPTH = 16


def gpu_count() -> int:
    """GPUs FAISS can use on this process's node (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def choose_backend(requested: Literal["auto", "cpu", "gpu"]) -> Literal["cpu", "gpu"]:
    gpus = gpu_count()
    if requested == "gpu" and gpus == 0:
        raise ConfigError(
            "retrieval.backend is 'gpu' but FAISS sees no GPU on this node "
            "(faiss-cpu installed, or no CUDA device); use 'auto' or 'cpu'"
        )
    if requested == "auto":
        return "gpu" if gpus > 0 else "cpu"
    return requested


@dataclass(frozen=True)
class TopK:
    """Fixed-shape results: rows -1 and scores -inf where the catalogue ran out."""

    rows: np.ndarray  # (n, k) int64
    scores: np.ndarray  # (n, k) float32


class ExactIndex:
    """Exact maximum inner product search (cosine on unit vectors).

    On GPU the index is replicated to every visible GPU; queries needing k above FAISS-GPU's
    limit are answered by the CPU copy, so no user gets fewer results on a GPU.
    """

    def __init__(self, cpu_index: faiss.Index, backend: Literal["cpu", "gpu"] = "cpu") -> None:
        self.cpu_index = cpu_index
        self.size, self.dim = cpu_index.ntotal, cpu_index.d
        self.backend = backend
        self.gpu_index = faiss.index_cpu_to_all_gpus(cpu_index) if backend == "gpu" else None

    @classmethod
    def build(cls, vectors: np.ndarray, backend: Literal["cpu", "gpu"] = "cpu") -> "ExactIndex":
        """Index (n_items, dim) unit vectors; row i of `vectors` is result row i."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n_items, dim)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index, backend)

    def to_bytes(self) -> np.ndarray:
        """The CPU index serialised (uint8), to build once and ship to every actor."""
        return faiss.serialize_index(self.cpu_index)

    @classmethod
    def from_bytes(cls, data: np.ndarray, backend: Literal["cpu", "gpu"] = "cpu") -> "ExactIndex":
        return cls(faiss.deserialize_index(np.asarray(data, dtype=np.uint8)), backend)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) -> scores (n, k), rows (n, k); k is capped at the catalogue size."""
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        index = self.gpu_index if self.gpu_index is not None and k <= GPU_MAX_K else self.cpu_index
        return index.search(queries, k)

    def search_excluding(self, queries: np.ndarray, k: int, exclude: RowLists | list[np.ndarray]) -> TopK:
        """Top k per query, skipping each query's own `exclude` rows.

        Every query is first searched for k + FIRST_DEPTH: a query with at most FIRST_DEPTH
        excluded rows among those results has its k unseen items. The rest, users whose seen
        items crowd the top of their list, are searched again for k + their number of
        excluded rows (rounded up to a power of two, one search per depth): enough that k
        unseen items remain whenever the catalogue has them. One large first search keeps
        FAISS at its large-call speed (small calls run several times slower per query), and a
        few heavy users do not make everyone search deep. Exclusion and ordering are
        vectorised. Ties are broken by row (item_id order), so results are deterministic.
        """
        exclude = RowLists.of(exclude)
        n = len(queries)
        rows = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0:
            return TopK(rows, scores)
        everyone = np.arange(n)
        found = self._search_unseen(queries, k, FIRST_DEPTH, exclude, rows, scores, everyone)  # (n,)
        n_excluded = exclude.lengths()  # (n,)
        again = np.flatnonzero((found < k) & (n_excluded > FIRST_DEPTH) & (k + FIRST_DEPTH < self.size))
        depth = 2 ** np.ceil(np.log2(np.maximum(n_excluded[again], 1))).astype(np.int64)  # (a,)
        for extra in np.unique(depth):
            members = again[depth == extra]
            self._search_unseen(queries[members], k, int(extra), exclude.subset(members), rows, scores, members)
        return TopK(rows, scores)

    def _search_unseen(self, queries: np.ndarray, k: int, extra: int, exclude: RowLists,
                       rows: np.ndarray, scores: np.ndarray, members: np.ndarray) -> np.ndarray:
        """Search (m, dim) queries for k + extra, drop each one's excluded rows, write the
        best k left into rows[members] and scores[members]; -> (m,) how many were left."""
        m = len(queries)
        found_scores, found_rows = self.search(queries, k + extra)  # (m, k'), (m, k')
        found_rows = found_rows.astype(np.int64)
        drop = found_rows < 0  # (m, k') FAISS pads with -1 past the catalogue's end
        # (user, row) pairs as one key each: found pairs that are excluded pairs are dropped.
        inside = (exclude.values >= 0) & (exclude.values < self.size)  # other values name no row
        excluded = np.sort((exclude.owners() * self.size + exclude.values)[inside])  # (e,)
        if len(excluded):
            keys = np.arange(m)[:, None] * self.size + np.maximum(found_rows, 0)  # (m, k')
            at = np.minimum(np.searchsorted(excluded, keys), len(excluded) - 1)  # (m, k')
            drop |= excluded[at] == keys
        found_scores = np.where(drop, -np.inf, found_scores)  # (m, k')
        order = np.lexsort((np.where(drop, self.size, found_rows), -found_scores), axis=-1)[:, :k]  # (m, k)
        picked_rows = np.take_along_axis(found_rows, order, axis=1)  # (m, k)
        picked_scores = np.take_along_axis(found_scores, order, axis=1)  # (m, k)
        kept = np.isfinite(picked_scores)  # (m, k) False past the unseen items
        width = picked_rows.shape[1]
        rows[members, :width] = np.where(kept, picked_rows, -1)
        scores[members, :width] = np.where(kept, picked_scores, -np.inf)
        return kept.sum(axis=1)
