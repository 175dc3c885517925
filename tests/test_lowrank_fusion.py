"""The low-rank collaborative partner and the fused top-K as one FAISS search."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import scipy.sparse as sp

from chatrec.baselines.ease import MAX_EASE_ITEMS
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.lowrank import LowRankRecency, gram_eigenpairs
from chatrec.baselines.topk import top_k_excluding
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import to_fixed_size_list
from chatrec.matcher.fusion import (
    EASE, LOW_RANK, Fusion, content_scores, partners_for, sample_validation_users, tune_fusion, tuning_users,
)
from chatrec.recommender import Recommender
from chatrec.retrieval import ExactIndex


def random_log(n_users: int, n_items: int, per_user: int, seed: int) -> pl.DataFrame:
    """Users drawn towards one of four item clusters, each interaction at its own time."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        cluster = u % 4
        for t in range(per_user):
            home = rng.random() < 0.8
            item = rng.integers(0, n_items // 4) * 4 + cluster if home else rng.integers(0, n_items)
            rows.append((f"u{u:04d}", f"i{item:04d}", t))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


def test_eigenpairs_match_a_dense_eigendecomposition_and_repeat_exactly():
    X = build_interaction_matrix(random_log(400, 80, 12, seed=0)).X
    V, s2 = gram_eigenpairs(X, 12)
    values, vectors = np.linalg.eigh((X.T @ X).toarray().astype(np.float64))
    top = np.argsort(-values)[:12]
    # The four cluster directions stand far above a flat noise floor: those are exact; the
    # floor's are approximate, as in any randomised solver with a few passes.
    np.testing.assert_allclose(s2[:4], values[top[:4]], rtol=1e-5)
    np.testing.assert_allclose(s2, values[top], rtol=5e-2)
    # The leading directions are the dense ones (up to sign).
    assert np.allclose(np.abs(np.sum(V[:, :4] * vectors[:, top[:4]], axis=0)), 1.0, atol=1e-4)
    assert np.allclose(V.T @ V, np.eye(12), atol=1e-8)
    V2, s2b = gram_eigenpairs(X, 12)
    assert np.array_equal(V, V2) and np.array_equal(s2, s2b)
    # A block as wide as the catalogue spans it: every eigenvalue is exact.
    _, half = gram_eigenpairs(X, 40)
    np.testing.assert_allclose(half, values[np.argsort(-values)[:40]], rtol=1e-8)


def test_full_rank_scores_are_the_ridge_linear_autoencoder_with_recency_weights():
    log = random_log(80, 24, 6, seed=1)
    matrix = build_interaction_matrix(log)
    model = LowRankRecency().fit(matrix, {"rank": 24, "l2": 5.0, "tau": 3.0})
    X = matrix.X.toarray().astype(np.float64)
    G = X.T @ X
    B = np.linalg.solve(G + 5.0 * np.eye(len(G)), G)  # (X^T X + lambda I)^-1 X^T X
    W = matrix.recency_weights(3.0).toarray()
    users = np.arange(matrix.n_users)
    np.testing.assert_allclose(model.scores(users), W @ B, atol=1e-4)
    # A rank below the catalogue is what it says: the scores have that rank.
    low = LowRankRecency().fit(matrix, {"rank": 5, "l2": 5.0, "tau": 3.0})
    assert low.factors.shape == (24, 5) and np.linalg.matrix_rank(low.scores(users), tol=1e-3) <= 5


def test_an_item_nobody_had_gets_no_collaborative_score():
    log = random_log(40, 16, 5, seed=2)
    items = sorted(set(log["item_id"].to_list())) + ["zz-new"]
    matrix = build_interaction_matrix(log, item_universe=items)
    model = LowRankRecency().fit(matrix, {"rank": 8, "l2": 1.0, "tau": math.inf})
    assert np.all(model.factors[-1] == 0) and np.all(model.scores(np.arange(5))[:, -1] == 0)


def _catalogue(ids: list[str], vectors: np.ndarray) -> ItemCatalogue:
    n = len(ids)
    return ItemCatalogue(item_ids=np.array(ids, dtype=object), vectors=vectors, display_titles=ids,
                         categories=[frozenset()] * n, entities=[frozenset()] * n, entity_items={})


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("new_item_term", [False, True])
def test_fused_top_k_by_one_search_equals_the_dense_fused_scores(new_item_term):
    rng = np.random.default_rng(3)
    log = random_log(120, 40, 8, seed=3)
    ids = sorted(set(log["item_id"].to_list())) + [f"zz-new{j}" for j in range(4)]  # 4 items without an id
    n_items = len(ids)
    matrix = build_interaction_matrix(log, item_universe=ids)
    collaborative = LowRankRecency().fit(matrix, {"rank": 16, "l2": 10.0, "tau": 5.0})
    tower_items, text = _unit(rng.normal(size=(n_items, 8))), _unit(rng.normal(size=(n_items, 6)))
    id_less = np.zeros(n_items, bool)
    id_less[-4:] = True
    # Each source in units of its spread, as the tuning scales them.
    cf_scale = 1.0 / float(np.std(collaborative.scores(np.arange(matrix.n_users))))
    fusion = Fusion(0.5, 1.0 / float(np.std(tower_items @ tower_items.T)), cf_scale, {}, [],
                    1.5 if new_item_term else 0.0, 2.0, 0.8 if new_item_term else 0.0, partner=LOW_RANK)
    users = matrix.user_ids[:50].tolist() + ["stranger"]  # a user the collaborative model never saw
    queries = _unit(rng.normal(size=(len(users), 8)))
    seen = [np.sort(np.flatnonzero(matrix.X[i].toarray()[0])) for i in range(50)] + [np.array([0, 1])]
    recent = [collaborative.matrix.history(i)[:10] for i in range(50)] + [np.array([1, 0])]
    batch = pa.table({"user_id": users, "embedding": to_fixed_size_list(queries),
                      "seen_rows": pa.array([s.tolist() for s in seen], pa.list_(pa.int32())),
                      "recent_rows": pa.array([r.tolist() for r in recent], pa.list_(pa.int32()))})
    k = 7
    rec = Recommender(index=ExactIndex.build(tower_items).to_bytes(), catalogue=_catalogue(ids, tower_items),
                      top_k=k, search_batch_size=16, run_id="r", strategy="two-tower",
                      fusion={"fusion": fusion, "collaborative": collaborative, "text": text, "id_less": id_less})
    assert rec.fused_vectors is not None and (rec.fused_vectors.text_dim > 0) == new_item_term
    out = rec(batch)

    # The dense reference: every term of every item, as chatrec.matcher.fusion defines them.
    codes = collaborative.matrix.user_codes(users)
    cf = np.zeros((len(users), n_items), np.float32)
    cf[codes >= 0] = collaborative.scores(codes[codes >= 0])
    tower_term, cf_term = fusion.terms(queries @ tower_items.T, cf)
    fused = (tower_term + cf_term).astype(np.float64)
    if new_item_term:
        content = content_scores(text, pa.array([r.tolist() for r in recent], pa.list_(pa.int64())))
        text_term, offset = fusion.new_item_terms(content, id_less)
        fused += text_term + offset[None, :]
    seen_matrix = sp.csr_matrix((np.ones(sum(map(len, seen))), np.concatenate(seen),
                                 np.concatenate([[0], np.cumsum([len(s) for s in seen])])), shape=fused.shape)
    expected = top_k_excluding(fused.copy(), seen_matrix, k)
    got = out.to_pandas().groupby("user_id", sort=False)
    for u, user in enumerate(users):
        rows = got.get_group(user)
        assert rows["item_id"].tolist() == [ids[c] for c in expected.codes[u]], user
        np.testing.assert_allclose(rows["score"].to_numpy(), expected.scores[u], rtol=1e-4, atol=1e-5)
    assert set(out["strategy"].to_pylist()) <= {"two-tower", "collaborative", "content"}
    assert "collaborative" in out["strategy"].to_pylist()  # the collaborative term carries some rows
    if new_item_term:
        assert any(i.startswith("zz-new") for i in out["item_id"].to_pylist())


def test_the_partner_is_chosen_on_validation_and_recorded():
    log = random_log(200, 40, 10, seed=4)
    train = log.filter(pl.col("timestamp") < 8)
    valid = log.filter(pl.col("timestamp") >= 8)
    ids = sorted(set(log["item_id"].to_list()))
    rng = np.random.default_rng(4)
    tower_items = _unit(rng.normal(size=(len(ids), 4)))

    def tower_scores_of(user_ids):  # a tower that knows nothing
        return _unit(rng.normal(size=(len(user_ids), 4))) @ tower_items.T

    fusion = tune_fusion(train_log=train, valid_log=valid, item_ids=ids, tower_scores_of=tower_scores_of)
    chosen = fusion.selection["chosen"]
    scores = {c["partner"]: c["ndcg@10"] for c in fusion.selection["candidates"]}
    assert set(scores) == {EASE, LOW_RANK} and fusion.partner == chosen
    assert scores[chosen] == max(scores.values())
    assert fusion.weight < 0.5  # a random tower earns little weight against a real collaborative score
    assert Fusion.from_manifest(fusion.manifest()) == fusion
    only = tune_fusion(train_log=train, valid_log=valid, item_ids=ids, tower_scores_of=tower_scores_of,
                       partners=[LOW_RANK])
    assert only.partner == LOW_RANK and [c["partner"] for c in only.selection["candidates"]] == [LOW_RANK]


def test_large_catalogues_get_the_low_rank_partner_and_a_bounded_tuning_sample():
    assert partners_for(MAX_EASE_ITEMS)[0] == [EASE, LOW_RANK]
    partners, why = partners_for(MAX_EASE_ITEMS + 1)
    assert partners == [LOW_RANK] and "above EASE's limit" in why
    assert tuning_users(1_682) == 4096 and tuning_users(500_000) == 536 and tuning_users(10**8) == 500
    valid = pl.DataFrame({"user_id": [f"u{i % 900}" for i in range(2000)], "item_id": ["x"] * 2000,
                          "timestamp": list(range(2000))})
    sample = sample_validation_users(valid, 100)
    assert sample["user_id"].n_unique() == 100
    assert sample.equals(sample_validation_users(valid, 100))  # seeded: the same users every time
    assert sample_validation_users(valid, 5000) is valid


def test_low_rank_tuning_walks_tau_first_then_rank_and_lambda():
    from chatrec.baselines.lowrank import STAGES
    from chatrec.baselines.tuning import tunable, tune

    log = random_log(150, 40, 10, seed=6)
    train, valid = log.filter(pl.col("timestamp") < 8), log.filter(pl.col("timestamp") >= 8)
    result = tune(LowRankRecency(), build_interaction_matrix(train), valid)
    taus, second = result.scores[: len(STAGES[0]["tau"])], result.scores[len(STAGES[0]["tau"]):]
    assert [s["params"]["tau"] for s in taus] == STAGES[0]["tau"]
    assert all((s["params"]["rank"], s["params"]["l2"]) == (128, 100.0) for s in taus)  # the defaults
    best_tau = max(taus, key=lambda s: s["ndcg@10"])["params"]["tau"]
    assert len(second) == 16 and {s["params"]["tau"] for s in second} == {best_tau}
    assert result.best_params == max(result.scores, key=lambda s: s["ndcg@10"])["params"]
    assert tunable(LowRankRecency())


def test_merging_a_changed_subset_ranks_as_ranking_every_item():
    from chatrec.matcher.fusion import merged_top_k

    rng = np.random.default_rng(7)
    n, m, k = 40, 30, 10
    for scores in (rng.normal(size=(n, m)), rng.integers(0, 4, size=(n, m)).astype(np.float64)):  # the second: ties
        seen = sp.random(n, m, density=0.3, random_state=rng, format="csr")
        seen.data[:] = 1.0
        columns = np.sort(rng.choice(m, size=8, replace=False))
        expected = top_k_excluding(scores.copy(), seen, k).codes
        others = scores.copy()
        others[:, columns] = -np.inf
        fixed = top_k_excluding(others, seen, k).codes
        fixed_scores = np.where(fixed >= 0, np.take_along_axis(others, np.maximum(fixed, 0), axis=1), -np.inf)
        got = merged_top_k(fixed, fixed_scores, scores[:, columns].copy(), columns, seen[:, columns], k)
        assert np.array_equal(got, expected)
