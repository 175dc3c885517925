import numpy as np
import pyarrow as pa
import pytest

from chatrec.catalogue import ItemCatalogue
from chatrec.errors import ConfigError
from chatrec.explain import because_rows, reason
from chatrec.retrieval import FIRST_DEPTH, ExactIndex, choose_backend
from chatrec.row_lists import RowLists
from chatrec.user_vectors import recency_weighted_mean, recency_weights


def unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def oracle(items, queries, k, exclude):
    """Brute force with numpy: the exact answer FAISS must reproduce."""
    scores = queries @ items.T  # (n, n_items)
    out = []
    for u in range(len(queries)):
        s = scores[u].copy()
        s[list(exclude[u])] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))
        out.append([r for r in order if np.isfinite(s[r])][:k])
    return out


def test_exact_search_with_exclusions_matches_brute_force():
    rng = np.random.default_rng(7)
    items, queries = unit(rng, 500, 16), unit(rng, 64, 16)
    exclude = [rng.choice(500, size=int(rng.integers(0, 120)), replace=False) for _ in range(64)]
    index = ExactIndex.from_bytes(ExactIndex.build(items).to_bytes())
    top = index.search_excluding(queries, 10, exclude)
    assert top.rows.shape == top.scores.shape == (64, 10)
    assert [list(r) for r in top.rows] == oracle(items, queries, 10, exclude)
    for u in range(64):
        assert not set(top.rows[u]) & set(exclude[u])
        assert np.all(np.diff(top.scores[u]) <= 0)


@pytest.mark.parametrize("crowd", [0, 1, FIRST_DEPTH, FIRST_DEPTH + 1, 2 * FIRST_DEPTH + 3, 300])
def test_users_whose_seen_items_fill_their_top_are_searched_deeper(crowd):
    """Seen items that are the user's own best matches (as a history-built vector's are)
    push the unseen ones below the first search's depth: the answer stays exact."""
    rng = np.random.default_rng(crowd)
    items, queries = unit(rng, 400, 8), unit(rng, 32, 8)
    best_first = np.argsort(-(queries @ items.T), axis=1)  # (32, 400)
    exclude = [best_first[u, : crowd if u % 2 else crowd // 2] for u in range(32)]  # each user's own top
    top = ExactIndex.build(items).search_excluding(queries, 10, RowLists.from_arrays(exclude))
    assert [list(r) for r in top.rows] == oracle(items, queries, 10, exclude)


def test_duplicate_and_out_of_catalogue_exclusions_exclude_only_their_own_rows():
    rng = np.random.default_rng(5)
    items, queries = unit(rng, 40, 4), unit(rng, 3, 4)
    exclude = [np.array([3, 3, 3, 40, 41, -1]), np.array([40 - 1 + 40]), np.array([], np.int64)]
    top = ExactIndex.build(items).search_excluding(queries, 5, exclude)
    assert [list(r) for r in top.rows] == oracle(items, queries, 5, [{3}, set(), set()])
    assert RowLists.from_arrays([]).to_arrays() == []


def test_row_lists_read_from_a_sliced_arrow_column_with_nulls():
    column = pa.array([[1, 2], None, [], [3], [4, 5, 6]], pa.list_(pa.int32())).slice(1, 4)
    rows = RowLists.from_arrow(pa.chunked_array([column]))
    assert [list(a) for a in rows.to_arrays()] == [[], [], [3], [4, 5, 6]]
    assert rows.padded().tolist() == [[-1, -1, -1], [-1, -1, -1], [3, -1, -1], [4, 5, 6]]
    assert [list(a) for a in rows.subset(np.array([3, 2])).to_arrays()] == [[4, 5, 6], [3]]
    kept = rows.filter(rows.values % 2 == 0).map(np.arange(10) * 10)
    assert [list(a) for a in kept.to_arrays()] == [[], [], [], [40, 60]]


def test_always_k_when_enough_unseen_items_and_padding_otherwise():
    rng = np.random.default_rng(1)
    items = unit(rng, 6, 4)
    index = ExactIndex.build(items)
    top = index.search_excluding(items[:2], 3, [np.array([0, 1, 2]), np.array([0, 1, 2, 3, 4])])
    assert (top.rows[0] >= 0).sum() == 3  # 3 unseen left: all returned
    assert list(top.rows[1][1:]) == [-1, -1] and top.rows[1][0] == 5  # only 1 unseen: padded
    assert np.isneginf(top.scores[1][1:]).all()


def test_ties_break_by_row():
    items = np.tile(np.array([[1.0, 0.0]], np.float32), (5, 1))  # five identical items
    top = ExactIndex.build(items).search_excluding(np.array([[1.0, 0.0]], np.float32), 3, [np.array([1])])
    assert list(top.rows[0]) == [0, 2, 3]


def test_gpu_backend_without_gpu_is_a_clear_error():
    assert choose_backend("auto") == "cpu"
    with pytest.raises(ConfigError, match="FAISS sees no GPU"):
        choose_backend("gpu")


def test_recency_weights_halve_every_half_life():
    w = recency_weights(np.array([3, 1]), half_life=1.0)
    np.testing.assert_allclose(w, [1.0, 0.5, 0.25, 1.0])


def test_recency_weighted_mean_known_answer():
    vectors = np.eye(3, dtype=np.float32)
    recent = pa.array([[0, 1], [2], []], pa.list_(pa.int32()))
    out = recency_weighted_mean(vectors, recent, half_life=1.0)
    np.testing.assert_allclose(out[0], np.array([1.0, 0.5, 0]) / np.linalg.norm([1.0, 0.5]), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0, 1])
    np.testing.assert_allclose(out[2], [0, 0, 0])  # no history: zero vector, not NaN


def catalogue():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    entities = [
        frozenset({"director\tm.1", "language\tm.en"}),
        frozenset({"director\tm.1", "language\tm.en"}),
        frozenset({"language\tm.en"}),
        frozenset({"language\tm.en"}),
    ]
    return ItemCatalogue(
        item_ids=np.array(["a", "b", "c", "d"], dtype=object),
        vectors=vectors,
        display_titles=["A (2000)", "B (2001)", "C", "D"],
        categories=[frozenset({"Crime"}), frozenset({"Crime", "Drama"}), frozenset({"Comedy"}), frozenset()],
        entities=entities,
        entity_items={"director\tm.1": 2, "language\tm.en": 200},
    )


def test_because_is_the_closest_history_item_most_recent_on_ties():
    cat = catalogue()
    assert list(because_rows(cat, np.array([1, 3]), np.array([2, 0]))) == [0, 2]
    assert list(because_rows(cat, np.array([1]), np.array([0, 0]))) == [0]
    assert list(because_rows(cat, np.array([1]), np.array([], np.int64))) == [-1]


def test_reason_prefers_specific_entities_then_categories_then_similarity():
    cat = catalogue()
    assert reason(cat, 1, 0) == "same director as A (2000); both Crime"
    assert reason(cat, 3, 2) == "similar to C"  # sharing only a common language explains nothing
    cat2 = ItemCatalogue(**{**cat.__dict__, "entities": [frozenset()] * 4})
    assert reason(cat2, 1, 0) == "like A (2000): both Crime"


def test_vectorised_reasons_and_because_items_match_the_one_by_one_ones():
    from chatrec.catalogue import ItemCatalogue
    from chatrec.explain import Reasons, because_matrix

    rng = np.random.default_rng(5)
    n = 60
    names = [f"genre{g:02d}" for g in range(70)]  # more names than an int64 bit set holds
    categories = [frozenset(rng.choice(names, size=int(rng.integers(0, 5)), replace=False)) for _ in range(n)]
    directors = [f"directed by\tm.{i // 6}" for i in range(n)]  # items 0 and 3 share one, 6 and 9 ...
    entities = [frozenset({directors[i]}) if i % 3 == 0 else frozenset() for i in range(n)]
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cat = ItemCatalogue(item_ids=np.array([f"i{i:02d}" for i in range(n)], dtype=object), vectors=vectors,
                        display_titles=[f"Title {i}" for i in range(n)], categories=categories, entities=entities,
                        entity_items={d: sum(d in e for e in entities) for d in set(directors)})
    items = np.concatenate([rng.integers(0, n, 500), [0, 3, 6]])
    because = np.concatenate([rng.integers(-1, n, 500), [3, 0, 9]])
    expected = [reason(cat, int(i), int(b)) for i, b in zip(items, because)]
    assert Reasons(cat)(items, because).tolist() == expected
    assert any(e.startswith("same director") for e in expected) and any(e.startswith("like") for e in expected)
    recommended = rng.integers(-1, n, (40, 6))
    recent = [rng.integers(0, n, int(rng.integers(0, 9))) for _ in range(40)]
    got = because_matrix(cat, recommended, recent)
    for u in range(40):
        want = because_rows(cat, np.maximum(recommended[u], 0), recent[u])
        assert got[u].tolist() == np.where(recommended[u] >= 0, want, -1).tolist()
