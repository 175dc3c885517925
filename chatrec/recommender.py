"""Turn user vectors into ranked, explained recommendation rows.

`Recommender` is the top-K stage's Ray Data callable: it loads the serialised FAISS index
and the catalogue once per actor, then for each block of users searches, excludes seen
items, and explains every result. `popularity_rows` serves users with no usable history.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pyarrow as pa
import ray
import scipy.sparse as sp

from chatrec import schemas
from chatrec.baselines.topk import top_k_excluding
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import fixed_size_list_to_numpy
from chatrec.explain import Reasons, because_matrix
from chatrec.matcher.fusion import FusedVectors, content_profiles, content_scores
from chatrec.new_item_slots import SLOT_STRATEGY, best_unseen, reserve_new_item_slots
from chatrec.retrieval import ExactIndex, choose_backend
from chatrec.row_lists import RowLists
from chatrec.user_buckets import BUCKET_COLUMN, user_buckets

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
        buckets: int | None = None,
    ) -> None:
        """`strategy` names the signal of the vectors ("content": text, "two-tower": the
        matcher). `fusion` ({"fusion": Fusion, "collaborative": the partner's fitted model,
        an ItemItemModel or a LowRankModel}, optionally "text": (n_items, d) unit text vectors
        and "id_less": (n_items,) bool, for the new-item term) switches to the hybrid, each
        row naming the signal that carried it: with EASE, exact dense scoring of every item;
        with the low-rank partner, one exact FAISS search over the fused vectors
        (chatrec.matcher.fusion.FusedVectors). `new_item_slots` of each list are kept for the
        items at `new_rows` (no interactions yet; chatrec.new_item_slots). With `buckets`,
        each row also carries its user's bucket (chatrec.user_buckets), hashed once per user."""
        if threads:
            faiss.omp_set_num_threads(threads)
        # Fails with a clear message when a GPU actor's node has faiss-cpu only.
        backend = choose_backend(backend)
        self.index = ExactIndex.from_bytes(_get(index), backend)
        self.catalogue: ItemCatalogue = _get(catalogue)
        self.threads = threads
        self.top_k = top_k
        self.search_batch_size = search_batch_size
        self.run_id = run_id
        self.buckets = buckets
        self.strategy = strategy
        self.fusion = _get(fusion)
        self.new_item_slots = new_item_slots
        self.new_rows = np.asarray(_get(new_rows) if new_rows is not None else [], dtype=np.int64)  # (m,)
        self.is_new = np.zeros(self.catalogue.size, bool)  # (n_items,)
        self.is_new[self.new_rows] = True
        self.fused_vectors = None
        if self.fusion is not None:
            collaborative = self.fusion["collaborative"]
            if list(collaborative.matrix.item_ids) != list(self.catalogue.item_ids):
                raise RuntimeError("the collaborative model's items are not the catalogue's")  # internal bug
            if hasattr(collaborative, "user_factors"):  # a low-rank partner: one search over fused vectors
                self.fused_vectors = FusedVectors.build(self.fusion["fusion"], self.catalogue.vectors,
                                                        collaborative.factors, self.fusion.get("text"),
                                                        self.fusion.get("id_less"))
                self.index = ExactIndex.build(self.fused_vectors.items, backend)
        # Each user's best new items come from an index of the new items alone (without fusion,
        # or with fused vectors: then of their fused rows).
        searched = self.fused_vectors.items if self.fused_vectors is not None else self.catalogue.vectors
        self.new_index = (ExactIndex.build(searched[self.new_rows], backend)
                          if self._slots and (self.fusion is None or self.fused_vectors is not None) else None)
        self._reasons = Reasons(self.catalogue)
        self._item_ids = pa.array(self.catalogue.item_ids, pa.string())  # (n_items,)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.threads:
            # OpenMP's thread count belongs to the calling thread, and Ray Data calls this from
            # a thread other than the constructor's: set there alone, FAISS searched with
            # OMP_NUM_THREADS (1 under Ray), half the speed at 2 threads.
            faiss.omp_set_num_threads(self.threads)
        parts = [
            self._recommend(batch.slice(start, self.search_batch_size))
            for start in range(0, batch.num_rows, self.search_batch_size)
        ]
        if parts:
            return pa.concat_tables(parts)
        empty = schemas.RECOMMENDATIONS.empty_table()
        return empty if self.buckets is None else empty.append_column(BUCKET_COLUMN, pa.array([], pa.int32()))

    def _recommend(self, batch: pa.Table) -> pa.Table:
        queries = fixed_size_list_to_numpy(batch.column("embedding"))  # (n, dim)
        seen = RowLists.from_arrow(batch.column("seen_rows"))
        recent = RowLists.from_arrow(batch.column("recent_rows"))
        user_ids = batch.column("user_id")
        if self.fusion is not None:
            rows, scores, explain = self._fused(queries, seen, user_ids.to_pylist(), batch.column("recent_rows"))
            placed = None
        else:
            top = self.index.search_excluding(queries, self.top_k, seen)  # (n, k)
            best = self._best_new_from_index(queries, seen) if self._slots else None
            rows, scores, placed = self._reserve_slots(top.rows, top.scores, best)
            explain = None
        valid = rows >= 0  # (n, k) fewer only when the catalogue has < k unseen items
        because = because_matrix(self.catalogue, rows, recent)  # (n, k)
        reasons = np.empty(rows.shape, dtype=object)  # (n, k)
        reasons[valid] = self._reasons(rows[valid], because[valid])
        strategies = np.full(rows.shape, self.strategy, dtype=object)  # (n, k)
        if explain is not None:
            because, reasons, strategies = explain(because, reasons, strategies)
        elif placed is not None:
            reasons, strategies = _mark_placed(placed & valid, reasons, strategies)
        item_rows, because_rows = rows[valid], because[valid]  # (m,) user by user, in rank order
        m = len(item_rows)
        # Ids are gathered by Arrow from the catalogue's id array, not as Python strings.
        ids = self._item_ids
        user_of_row = np.repeat(np.arange(len(rows)), valid.sum(axis=1))  # (m,)
        table = pa.table(
            {
                "user_id": user_ids.take(user_of_row),
                "rank": pa.array(np.cumsum(valid, axis=1)[valid], pa.int32()),
                "item_id": ids.take(item_rows),
                "score": pa.array(scores[valid], pa.float32()),
                "because_item_id": ids.take(pa.array(because_rows, mask=because_rows < 0)),
                "reason": pa.array(reasons[valid], pa.string()),
                "strategy": pa.array(strategies[valid], pa.string()),
                "run_id": pa.array([self.run_id], pa.string()).take(np.zeros(m, np.int64)),
                "explanation": pa.nulls(m, pa.string()),  # the rerank stage's, when it runs
            },
            schema=schemas.RECOMMENDATIONS,
        )
        if self.buckets is None:
            return table
        return table.append_column(BUCKET_COLUMN, user_buckets(user_ids, self.buckets).take(user_of_row))

    def _fused(self, queries: np.ndarray, seen: RowLists, user_ids: list[str], recent_rows):
        """Exact hybrid top-K (see chatrec.matcher.fusion): items without an id vector get the
        new-item term instead of the collaborative one. -> rows (n, k), scores (n, k) and the
        function that explains user u's rows."""
        fusion, collaborative = self.fusion["fusion"], self.fusion["collaborative"]
        user_codes = collaborative.matrix.user_codes(user_ids)  # (n,) -1: no collaborative history
        known = user_codes >= 0
        id_less = self.fusion.get("id_less")
        new_term = id_less is not None and id_less.any() and fusion.has_new_item_term
        recent = recent_rows.combine_chunks() if isinstance(recent_rows, pa.ChunkedArray) else recent_rows
        if self.fused_vectors is not None:
            searched = self._fused_search(queries, seen, user_codes, recent if new_term else None)
        else:
            searched = self._fused_dense(queries, seen, user_codes, recent if new_term else None)
        codes, scores, placed, tower_picked, cf_picked, text_picked = searched
        carried = (cf_picked > 0) & (cf_picked > tower_picked)  # (n, k): collaborative won
        by_text = (text_picked > 0) & (text_picked > tower_picked)  # (n, k): a new item's text won
        cf_because = np.full(codes.shape, -1, np.int64)
        if known.any():
            cf_because[known] = collaborative.because(user_codes[known], codes[known])
        titles = np.asarray(self.catalogue.display_titles, dtype=object)

        def explained(because: np.ndarray, reasons: np.ndarray, strategies: np.ndarray):
            """(n, k) because rows, reasons, strategies -> the same, each row naming its signal."""
            collaborative = carried & (cf_because >= 0) & ~placed  # (n, k)
            text = by_text & ~collaborative & ~placed  # (n, k): the reason stays the text-based one
            because = np.where(collaborative, cf_because, because)
            reasons = reasons.copy()
            reasons[collaborative] = [f"often together with {t}" for t in titles[cf_because[collaborative]]]
            strategies = np.where(collaborative, "collaborative", np.where(text, "content", "two-tower")).astype(object)
            return (because, *_mark_placed(placed & (codes >= 0), reasons, strategies))

        return codes, scores, explained

    def _fused_dense(self, queries: np.ndarray, seen: RowLists, user_codes: np.ndarray, recent):
        """Every item scored by both signals (EASE's item x item partner)."""
        fusion, collaborative = self.fusion["fusion"], self.fusion["collaborative"]
        n, n_items = len(queries), self.catalogue.size
        tower = queries @ self.catalogue.vectors.T  # (n, n_items)
        known = user_codes >= 0
        cf = np.zeros_like(tower)  # (n, n_items)
        if known.any():
            cf[known] = collaborative.scores(user_codes[known])
        tower_term, cf_term = fusion.terms(tower, cf)  # (n, n_items) each
        text_term = np.zeros_like(tower)  # (n, n_items): the new-item text term, 0 for items with an id
        fused = tower_term + cf_term  # (n, n_items)
        if recent is not None:
            content = content_scores(self.fusion["text"], recent)  # (n, n_items)
            text_term, offset = fusion.new_item_terms(content, self.fusion["id_less"])  # (n, n_items), (n_items,)
            fused += text_term + offset[None, :]
        seen_matrix = sp.csr_matrix((np.ones(len(seen.values), np.float32), seen.values, seen.offsets),
                                    shape=(n, n_items))
        top = top_k_excluding(fused, seen_matrix, self.top_k)  # (n, k)
        best = best_unseen(fused[:, self.new_rows], self.new_rows, seen.to_arrays(), self._depth) if self._slots else None
        codes, scores, placed = self._reserve_slots(top.codes, top.scores, best)
        picked, rows_idx = np.maximum(codes, 0), np.arange(n)[:, None]  # (n, k), (n, 1)
        return (codes, scores, placed, tower_term[rows_idx, picked], cf_term[rows_idx, picked],
                text_term[rows_idx, picked])

    def _fused_search(self, queries: np.ndarray, seen: RowLists, user_codes: np.ndarray, recent):
        """One search over the fused vectors (the low-rank partner): only the picked items'
        terms are computed, to explain them."""
        fusion, collaborative = self.fusion["fusion"], self.fusion["collaborative"]
        known = user_codes >= 0
        factors = np.zeros((len(queries), collaborative.rank), np.float32)  # (n, r)
        if known.any():
            factors[known] = collaborative.user_factors(user_codes[known])
        profiles = content_profiles(self.fusion["text"], recent) if self.fused_vectors.text_dim else None
        fused_queries = self.fused_vectors.queries(fusion, queries, factors, profiles)  # (n, D)
        top = self.index.search_excluding(fused_queries, self.top_k, seen)  # (n, k)
        best = self._best_new_from_index(fused_queries, seen) if self._slots else None
        codes, scores, placed = self._reserve_slots(top.rows, top.scores, best)
        tower, cf, text = self.fused_vectors.picked_terms(fused_queries, np.maximum(codes, 0))  # (n, k) each
        return codes, scores, placed, tower, cf, text

    @property
    def _slots(self) -> bool:
        return self.new_item_slots > 0 and len(self.new_rows) > 0

    @property
    def _depth(self) -> int:
        # Up to K of a user's best new items can already be in the list.
        return self.top_k + self.new_item_slots

    def _best_new_from_index(self, queries: np.ndarray, seen: RowLists) -> tuple[np.ndarray, np.ndarray]:
        """Each user's best `_depth` unseen new items: rows (n, depth), -1 past the last; scores."""
        position = np.full(self.catalogue.size, -1, np.int64)
        position[self.new_rows] = np.arange(len(self.new_rows))  # catalogue row -> row in new_index
        seen_new = seen.filter(self.is_new[seen.values]).map(position)  # in new_index rows
        top = self.new_index.search_excluding(queries, self._depth, seen_new)  # (n, depth) in new_index rows
        return np.where(top.rows >= 0, self.new_rows[np.maximum(top.rows, 0)], -1), top.scores

    def _reserve_slots(self, rows: np.ndarray, scores: np.ndarray, best: tuple[np.ndarray, np.ndarray] | None):
        """(n, k) rows and scores -> the same with the new-item slots filled, and placed (n, k)."""
        if best is None:
            return rows, scores, np.zeros(rows.shape, bool)
        return reserve_new_item_slots(rows, scores, self.is_new, *best, self.new_item_slots)



def _mark_placed(placed: np.ndarray, reasons: np.ndarray, strategies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) rows a new-item slot put in the list say so in `reason` and `strategy`."""
    reasons, strategies = reasons.copy(), strategies.copy()
    reasons[placed] = [f"new, no interactions yet; {r}" for r in reasons[placed]]
    strategies[placed] = SLOT_STRATEGY
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
