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

        Users are grouped by how many rows they exclude (rounded up to a power of two) and
        each group is searched once for k + that many: enough that k unseen items remain
        whenever the catalogue has them, without searching every user as deep as the
        heaviest one. Ties are broken by row (item_id order), so results are deterministic.
        """
        n = len(queries)
        rows = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        if n == 0:
            return TopK(rows, scores)
        n_excluded = np.array([len(e) for e in exclude])
        depth = np.where(n_excluded > 0, 2 ** np.ceil(np.log2(np.maximum(n_excluded, 1))), 0).astype(np.int64)
        for extra in np.unique(depth):
            members = np.flatnonzero(depth == extra)
            found_scores, found_rows = self.search(queries[members], k + int(extra))  # (m, k+extra)
            for j, user in enumerate(members):
                keep = found_rows[j] >= 0
                if n_excluded[user]:
                    keep &= ~np.isin(found_rows[j], exclude[user])
                cand_rows, cand_scores = found_rows[j][keep], found_scores[j][keep]
                order = np.lexsort((cand_rows, -cand_scores))[:k]
                rows[user, : len(order)] = cand_rows[order]
                scores[user, : len(order)] = cand_scores[order]
        return TopK(rows, scores)
