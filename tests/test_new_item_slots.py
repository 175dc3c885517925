"""Exploration slots for items without interactions (chatrec.new_item_slots)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from chatrec.config import RetrievalConfig
from chatrec.new_item_slots import best_unseen, reserve_new_item_slots

NEG = -np.inf


def _is_new(rows, n_items=10):
    mask = np.zeros(n_items, bool)
    mask[rows] = True
    return mask


def test_missing_new_items_replace_the_lowest_ranked_known_items_best_first():
    rows = np.array([[0, 1, 2, 3]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    best_rows, best_scores = best_unseen(np.array([[0.1, 0.3]]), np.array([5, 6]), [np.array([])], depth=6)
    assert best_rows.tolist() == [[6, 5]]
    out_rows, out_scores, placed = reserve_new_item_slots(rows, scores, _is_new([5, 6]), best_rows, best_scores, 2)
    assert out_rows.tolist() == [[0, 1, 6, 5]]
    assert np.allclose(out_scores, [[0.9, 0.8, 0.3, 0.1]])
    assert placed.tolist() == [[False, False, True, True]]


def test_a_new_item_the_ranking_already_holds_counts_and_stays_where_it_is():
    rows = np.array([[0, 5, 1, 2]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    best = best_unseen(np.array([[0.8, 0.2]]), np.array([5, 6]), [np.array([])], depth=6)
    out_rows, _, placed = reserve_new_item_slots(rows, scores, _is_new([5, 6]), *best, 2)
    assert out_rows.tolist() == [[0, 5, 1, 6]]  # 2, the lowest known item, made way
    assert placed.tolist() == [[False, False, False, True]]
    # Already enough: nothing changes.
    same_rows, _, none_placed = reserve_new_item_slots(rows, scores, _is_new([5, 6]), *best, 1)
    assert same_rows.tolist() == rows.tolist() and not none_placed.any()


def test_seen_new_items_are_never_placed_and_short_lists_are_left_alone():
    new_rows = np.array([5, 6])
    best_rows, best_scores = best_unseen(np.array([[0.5, 0.4], [0.5, 0.4]]), new_rows,
                                         [np.array([5, 6]), np.array([6])], depth=4)
    assert best_rows.tolist() == [[-1, -1], [5, -1]]
    rows = np.array([[0, 1, 2], [0, 1, 2]])
    out_rows, _, placed = reserve_new_item_slots(rows, np.ones((2, 3)), _is_new(new_rows), best_rows, best_scores, 2)
    assert out_rows.tolist() == [[0, 1, 2], [0, 1, 5]]  # user 0 has seen every new item
    assert placed.sum() == 1
    short = np.array([[0, 1, -1]])  # the catalogue ran out: every unseen item is already listed
    assert reserve_new_item_slots(short, np.ones((1, 3)), _is_new(new_rows), best_rows[1:], best_scores[1:],
                                  2)[0].tolist() == [[0, 1, -1]]


@pytest.mark.parametrize("seed", range(20))
def test_random_lists_keep_the_best_known_items_and_hold_enough_new_ones(seed):
    rng = np.random.default_rng(seed)
    n_items, k, slots = 40, 8, int(rng.integers(1, 5))
    new = np.sort(rng.choice(n_items, size=int(rng.integers(1, 10)), replace=False))
    full = rng.normal(size=(6, n_items))  # every item's score for 6 users
    seen = [rng.choice(n_items, size=int(rng.integers(0, 10)), replace=False) for _ in range(6)]
    ranked = full.copy()
    for u, s in enumerate(seen):
        ranked[u, s] = NEG
    rows = np.argsort(-ranked, axis=1)[:, :k]
    scores = np.take_along_axis(ranked, rows, axis=1)
    best = best_unseen(full[:, new], new, seen, depth=k + slots)
    out_rows, out_scores, placed = reserve_new_item_slots(rows, scores, _is_new(new, n_items), *best, slots)
    for u in range(6):
        listed = out_rows[u].tolist()
        available = len(set(new.tolist()) - set(seen[u].tolist()))
        assert len(set(listed)) == k and not set(listed) & set(seen[u].tolist())
        assert np.isin(listed, new).sum() >= min(slots, available)
        assert np.all(np.diff(out_scores[u]) <= 1e-6)  # still sorted by score
        assert np.allclose(out_scores[u], full[u, out_rows[u]], atol=1e-6)
        known_kept = [r for r in listed if r not in new]
        known_ranked = [r for r in rows[u].tolist() if r not in new]
        assert known_kept == known_ranked[: len(known_kept)]  # the best known items stay, in order
        assert placed[u].sum() == max(0, min(slots, available) - np.isin(rows[u], new).sum())


def test_more_slots_than_places_is_refused_naming_both_keys():
    with pytest.raises(ValueError, match=r"new_item_slots \(5\).*top_k \(4\)"):
        RetrievalConfig(top_k=4, new_item_slots=5)


def test_the_top_k_stage_fills_the_slots_and_names_them_in_reason_and_strategy():
    from chatrec.catalogue import ItemCatalogue
    from chatrec.encoder import to_fixed_size_list
    from chatrec.recommender import Recommender
    from chatrec.retrieval import ExactIndex

    ids = ["a", "b", "c", "n1", "n2"]  # n1, n2: no interactions
    vectors = np.array([[1, 0], [0.95, 0.3], [0.9, 0.45], [0.0, 1.0], [0.6, 0.8]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalogue = ItemCatalogue(item_ids=np.array(ids, dtype=object), vectors=vectors, display_titles=ids,
                              categories=[frozenset()] * 5, entities=[frozenset()] * 5, entity_items={})
    batch = pa.table({"user_id": ["u1"], "embedding": to_fixed_size_list(np.array([[1, 0]], np.float32)),
                      "seen_rows": pa.array([[0]], pa.list_(pa.int32())),
                      "recent_rows": pa.array([[0]], pa.list_(pa.int32()))})

    def top(slots: int) -> pa.Table:
        return Recommender(index=ExactIndex.build(vectors).to_bytes(), catalogue=catalogue, top_k=2,
                           search_batch_size=8, run_id="r", backend="cpu", new_item_slots=slots,
                           new_rows=np.array([3, 4]))(batch)

    assert top(0)["item_id"].to_pylist() == ["b", "c"]
    out = top(1)
    assert out["item_id"].to_pylist() == ["b", "n2"]  # n2, the closer new item, takes the last place
    assert out["strategy"].to_pylist() == ["content", "new-item"]
    assert out["reason"].to_pylist()[1] == "new, no interactions yet; similar to a"
    assert out["rank"].to_pylist() == [1, 2]
