"""Turn user vectors into ranked, explained recommendation rows.

`Recommender` is the top-K stage's Ray Data callable: it loads the serialised FAISS index
and the catalogue once per actor, then for each block of users searches, excludes seen
items, and explains every result. `popularity_rows` serves users with no usable history.
"""

from __future__ import annotations

import logging
import time

import faiss
import numpy as np
import pyarrow as pa
import ray
import scipy.sparse as sp

from chatrec import schemas
from chatrec.baselines.topk import top_k_excluding
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import PROGRESS_EVERY_S, fixed_size_list_to_numpy
from chatrec.explain import because_rows, reason
from chatrec.matcher.fusion import content_scores
from chatrec.new_item_slots import SLOT_STRATEGY, best_unseen, reserve_new_item_slots
from chatrec.retrieval import ExactIndex, choose_backend

logger = logging.getLogger(__name__)


def _get(value):
    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


class Recommender:
    """user vectors (schemas.user_vectors) -> recommendations (schemas.RECOMMENDATIONS)."""

    def __init__(
        self,
        *,
        index: np.ndarray | ray.ObjectRef,
        catalogue: ItemCatalogue | ray.ObjectRef,
        top_k: int,
        search_batch_size: int,
        run_id: str,
        backend: str = "cpu",
        threads: int | None = None,
        strategy: str = "content",
        fusion: dict | ray.ObjectRef | None = None,
        new_item_slots: int = 0,
        new_rows: np.ndarray | ray.ObjectRef | None = None,
    ) -> None:
        """`strategy` names the signal of the vectors ("content": text, "two-tower": the
        matcher). `fusion` ({"fusion": Fusion, "collaborative": ItemItemModel}, optionally
        "text": (n_items, d) unit text vectors and "id_less": (n_items,) bool, for the new-item
        term) switches to the hybrid: exact dense scoring of every item, each row naming the
        signal that carried it. `new_item_slots` of each list are kept for the items at
        `new_rows` (no interactions yet; chatrec.new_item_slots)."""
        if threads:
            faiss.omp_set_num_threads(threads)
        # Fails with a clear message when a GPU actor's node has faiss-cpu only.
        backend = choose_backend(backend)
        self.index = ExactIndex.from_bytes(_get(index), backend)
        self.catalogue: ItemCatalogue = _get(catalogue)
        self.top_k = top_k
        self.search_batch_size = search_batch_size
        self.run_id = run_id
        self.strategy = strategy
        self.fusion = _get(fusion)
        self.new_item_slots = new_item_slots
        self.new_rows = np.asarray(_get(new_rows) if new_rows is not None else [], dtype=np.int64)  # (m,)
        self.is_new = np.zeros(self.catalogue.size, bool)  # (n_items,)
        self.is_new[self.new_rows] = True
        # Without fusion, each user's best new items come from an index of the new items alone.
        self.new_index = (ExactIndex.build(self.catalogue.vectors[self.new_rows], backend)
                          if self._slots and self.fusion is None else None)
        if self.fusion is not None:
            items = self.fusion["collaborative"].matrix.item_ids
            if list(items) != list(self.catalogue.item_ids):
                raise RuntimeError("the collaborative model's items are not the catalogue's")  # internal bug
        self._done = 0
        self._started = self._last_log = time.monotonic()

    def __call__(self, batch: pa.Table) -> pa.Table:
        parts = [
            self._recommend(batch.slice(start, self.search_batch_size))
            for start in range(0, batch.num_rows, self.search_batch_size)
        ]
        self._report(batch.num_rows)
        return pa.concat_tables(parts) if parts else schemas.RECOMMENDATIONS.empty_table()

    def _recommend(self, batch: pa.Table) -> pa.Table:
        queries = fixed_size_list_to_numpy(batch.column("embedding"))  # (n, dim)
        seen = [np.asarray(s, dtype=np.int64) for s in batch.column("seen_rows").to_pylist()]
        recent = [np.asarray(r, dtype=np.int64) for r in batch.column("recent_rows").to_pylist()]
        user_ids = batch.column("user_id").to_pylist()
        if self.fusion is not None:
            rows_of, scores_of, explained = self._fused(queries, seen, user_ids, batch.column("recent_rows"))
            placed = None
        else:
            top = self.index.search_excluding(queries, self.top_k, seen)  # (n, k)
            best = self._best_new_from_index(queries, seen) if self._slots else None
            rows_of, scores_of, placed = self._reserve_slots(top.rows, top.scores, best)
            explained = None
        out_user, out_rank, out_rows, out_scores, out_because, out_reason, out_strategy = [], [], [], [], [], [], []
        for u, user in enumerate(user_ids):
            valid = rows_of[u] >= 0  # fewer only when the catalogue has < k unseen items
            rows = rows_of[u][valid]
            because = because_rows(self.catalogue, rows, recent[u])  # (k,)
            reasons = [reason(self.catalogue, int(r), int(b)) for r, b in zip(rows, because)]
            strategies = [self.strategy] * len(rows)
            if explained is not None:
                because, reasons, strategies = explained(u, rows, because, reasons)
            elif placed is not None:
                reasons, strategies = _mark_placed(placed[u][valid], reasons, strategies)
            out_user.extend([user] * len(rows))
            out_rank.extend(range(1, len(rows) + 1))
            out_rows.append(rows)
            out_scores.append(scores_of[u][valid])
            out_because.append(because)
            out_reason.extend(reasons)
            out_strategy.extend(strategies)
        rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
        because = np.concatenate(out_because) if out_because else np.zeros(0, np.int64)
        ids = self.catalogue.item_ids
        return pa.table(
            {
                "user_id": pa.array(out_user, pa.string()),
                "rank": pa.array(out_rank, pa.int32()),
                "item_id": pa.array(ids[rows].tolist(), pa.string()),
                "score": pa.array(np.concatenate(out_scores) if out_scores else [], pa.float32()),
                "because_item_id": pa.array([ids[b] if b >= 0 else None for b in because], pa.string()),
                "reason": pa.array(out_reason, pa.string()),
                "strategy": pa.array(out_strategy, pa.string()),
                "run_id": pa.array([self.run_id] * len(rows), pa.string()),
                "explanation": pa.nulls(len(rows), pa.string()),  # the rerank stage's, when it runs
            },
            schema=schemas.RECOMMENDATIONS,
        )

    def _fused(self, queries: np.ndarray, seen: list[np.ndarray], user_ids: list[str], recent_rows):
        """Exact hybrid top-K: every item scored by both signals (see chatrec.matcher.fusion);
        items without an id vector get the new-item term instead of EASE's."""
        fusion, collaborative = self.fusion["fusion"], self.fusion["collaborative"]
        n, n_items = len(queries), self.catalogue.size
        tower = queries @ self.catalogue.vectors.T  # (n, n_items)
        user_codes = collaborative.matrix.user_codes(user_ids)  # (n,) -1: no collaborative history
        cf = np.zeros_like(tower)  # (n, n_items)
        known = user_codes >= 0
        if known.any():
            cf[known] = collaborative.scores(user_codes[known])
        tower_term, cf_term = fusion.terms(tower, cf)  # (n, n_items) each
        text_term = np.zeros_like(tower)  # (n, n_items): the new-item text term, 0 for items with an id
        id_less = self.fusion.get("id_less")
        fused = tower_term + cf_term  # (n, n_items)
        if id_less is not None and id_less.any() and (fusion.cold_weight > 0 or fusion.cold_offset != 0):
            recent = recent_rows.combine_chunks() if isinstance(recent_rows, pa.ChunkedArray) else recent_rows
            content = content_scores(self.fusion["text"], recent)  # (n, n_items)
            text_term, offset = fusion.new_item_terms(content, id_less)  # (n, n_items), (n_items,)
            fused += text_term + offset[None, :]
        seen_matrix = sp.csr_matrix(
            (np.ones(sum(len(s) for s in seen), np.float32), np.concatenate(seen) if seen else [],
             np.concatenate([[0], np.cumsum([len(s) for s in seen])])),
            shape=(n, n_items),
        )
        top = top_k_excluding(fused, seen_matrix, self.top_k)  # (n, k)
        best = best_unseen(fused[:, self.new_rows], self.new_rows, seen, self._depth) if self._slots else None
        codes, scores, placed = self._reserve_slots(top.codes, top.scores, best)
        picked = np.maximum(codes, 0)  # (n, k)
        rows_idx = np.arange(n)[:, None]
        cf_picked = cf_term[rows_idx, picked]  # (n, k)
        carried = (cf_picked > 0) & (cf_picked > tower_term[rows_idx, picked])  # (n, k): collaborative won
        text_picked = text_term[rows_idx, picked]  # (n, k)
        by_text = (text_picked > 0) & (text_picked > tower_term[rows_idx, picked])  # (n, k): a new item's text won
        cf_because = np.full(codes.shape, -1, np.int64)
        if known.any():
            cf_because[known] = collaborative.because(user_codes[known], codes[known])
        titles = self.catalogue.display_titles

        def explained(u, rows, because, reasons):
            k = len(rows)
            out_because, out_reasons, out_strategy = because.copy(), list(reasons), ["two-tower"] * k
            for j in range(k):
                if placed[u, j]:
                    continue  # _mark_placed below
                if carried[u, j] and cf_because[u, j] >= 0:
                    out_because[j] = cf_because[u, j]
                    out_reasons[j] = f"often together with {titles[cf_because[u, j]]}"
                    out_strategy[j] = "collaborative"
                elif by_text[u, j]:
                    out_strategy[j] = "content"  # the reason stays the text-based one
            out_reasons, out_strategy = _mark_placed(placed[u][:k], out_reasons, out_strategy)
            return out_because, out_reasons, out_strategy

        return codes, scores, explained

    @property
    def _slots(self) -> bool:
        return self.new_item_slots > 0 and len(self.new_rows) > 0

    @property
    def _depth(self) -> int:
        # Up to K of a user's best new items can already be in the list.
        return self.top_k + self.new_item_slots

    def _best_new_from_index(self, queries: np.ndarray, seen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Each user's best `_depth` unseen new items: rows (n, depth), -1 past the last; scores."""
        position = np.full(self.catalogue.size, -1, np.int64)
        position[self.new_rows] = np.arange(len(self.new_rows))  # catalogue row -> row in new_index
        seen_new = [position[s[self.is_new[s]]] for s in seen]
        top = self.new_index.search_excluding(queries, self._depth, seen_new)  # (n, depth) in new_index rows
        return np.where(top.rows >= 0, self.new_rows[np.maximum(top.rows, 0)], -1), top.scores

    def _reserve_slots(self, rows: np.ndarray, scores: np.ndarray, best: tuple[np.ndarray, np.ndarray] | None):
        """(n, k) rows and scores -> the same with the new-item slots filled, and placed (n, k)."""
        if best is None:
            return rows, scores, np.zeros(rows.shape, bool)
        return reserve_new_item_slots(rows, scores, self.is_new, *best, self.new_item_slots)

    def _report(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            rate = self._done / max(now - self._started, 1e-9)
            logger.info("top-K actor: %d users scored (%.0f users/s)", self._done, rate)
            self._last_log = now


def _mark_placed(placed: np.ndarray, reasons: list[str], strategies: list[str]) -> tuple[list[str], list[str]]:
    """Rows a new-item slot put in the list say so in `reason` and `strategy`."""
    reasons, strategies = list(reasons), list(strategies)
    for j in np.flatnonzero(placed):
        reasons[j] = f"new, no interactions yet; {reasons[j]}"
        strategies[j] = SLOT_STRATEGY
    return reasons, strategies


def popularity_rows(user_ids: list[str], popularity: pa.Table, *, top_k: int, run_id: str) -> pa.Table:
    """The same top-K most popular items for each user (who has no usable history).

    score is the share of users who interacted with the item; strategy is "popularity".
    """
    top = popularity.slice(0, top_k)
    k = top.num_rows
    items = top.column("item_id").to_pylist()
    shares = top.column("share").to_pylist()
    counts = top.column("users").to_pylist()
    reasons = [f"popular: {c} users interacted with it" for c in counts]
    n = len(user_ids)
    return pa.table(
        {
            "user_id": pa.array([u for u in user_ids for _ in range(k)], pa.string()),
            "rank": pa.array(list(range(1, k + 1)) * n, pa.int32()),
            "item_id": pa.array(items * n, pa.string()),
            "score": pa.array(shares * n, pa.float32()),
            "because_item_id": pa.array([None] * (k * n), pa.string()),
            "reason": pa.array(reasons * n, pa.string()),
            "strategy": pa.array(["popularity"] * (k * n), pa.string()),
            "run_id": pa.array([run_id] * (k * n), pa.string()),
            "explanation": pa.nulls(k * n, pa.string()),
        },
        schema=schemas.RECOMMENDATIONS,
    )
