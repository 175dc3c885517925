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

logger = logging.getLogger(__name__)

# FAISS GPU indexes select at most this many results per query.
GPU_MAX_K = 2048
# search_excluding searches every user at least this far past k (see there). On 1M synthetic
# users (about 11 interactions each) 64 made the top-K stage 202 s, 32 made it 354 s: the
# users with 33 to 64 seen items then formed a second, smaller search call per block, and
# FAISS runs small calls far below its large-call speed.
MIN_DEPTH = 64


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

    def search_excluding(self, queries: np.ndarray, k: int, exclude: list[np.ndarray]) -> TopK:
        """Top k per query, skipping each query's own `exclude` rows.

        Users are grouped by how many rows they exclude, rounded up to a power of two but at
        least MIN_DEPTH, and each group is searched once for k + that many: enough that k
        unseen items remain whenever the catalogue has them. The floor puts the many users
        with short histories in one call (one large search runs at twice the speed of four
        small ones), while a few heavy users do not make everyone search as deep as they must.
        Exclusion and ordering are vectorised over each group. Ties are broken by row
        (item_id order), so results are deterministic.
        """
        n = len(queries)
        rows = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0:
            return TopK(rows, scores)
        n_excluded = np.array([len(e) for e in exclude], dtype=np.int64)  # (n,)
        depth = np.maximum(MIN_DEPTH, 2 ** np.ceil(np.log2(np.maximum(n_excluded, 1)))).astype(np.int64)  # (n,)
        for extra in np.unique(depth):
            members = np.flatnonzero(depth == extra)  # (m,)
            found_scores, found_rows = self.search(queries[members], k + int(extra))  # (m, k'), (m, k')
            found_rows = found_rows.astype(np.int64)
            drop = found_rows < 0  # (m, k') FAISS pads with -1 past the catalogue's end
            if n_excluded[members].any():
                # (user, row) pairs as one key each: found pairs that are excluded pairs are dropped.
                owner = np.repeat(np.arange(len(members)), n_excluded[members])  # (e,)
                excluded = owner * self.size + np.concatenate([exclude[u] for u in members]).astype(np.int64)
                found = np.arange(len(members))[:, None] * self.size + np.maximum(found_rows, 0)  # (m, k')
                drop |= np.isin(found, excluded)
            found_scores = np.where(drop, -np.inf, found_scores)  # (m, k')
            order = np.lexsort((np.where(drop, self.size, found_rows), -found_scores), axis=-1)[:, :k]  # (m, k)
            picked_rows = np.take_along_axis(found_rows, order, axis=1)  # (m, k)
            picked_scores = np.take_along_axis(found_scores, order, axis=1)  # (m, k)
            kept = np.isfinite(picked_scores)  # (m, k) False past the unseen items
            width = picked_rows.shape[1]
            rows[members, :width] = np.where(kept, picked_rows, -1)
            scores[members, :width] = np.where(kept, picked_scores, -np.inf)
        return TopK(rows, scores)
