"""Metrics against hand-computed values, slices, coverage, A/B comparison, the report."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from chatrec.errors import InputDataError
from chatrec.evaluation.compare import compare_per_user
from chatrec.evaluation.evaluator import evaluate_recommendations, history_bucket_labels
from chatrec.evaluation.metrics import mean_metrics, ndcg_of_topk, per_user_metrics, positives_of
from chatrec.evaluation.report import render_report


def _recs(lists: dict[str, list[str]]) -> pl.DataFrame:
    rows = [(u, r + 1, i) for u, items in lists.items() for r, i in enumerate(items)]
    return pl.DataFrame(rows, schema=["user_id", "rank", "item_id"], orient="row")


def _log(pairs: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(u, i, t) for t, (u, i) in enumerate(pairs)], schema=["user_id", "item_id", "timestamp"], orient="row"
    )


# Three users, K = 3 (computed by hand below):
#   u1 recs x1 x2 x3, test {x2, x9}: one hit at rank 2 of 2 positives
#   u2 recs y1 y2 y3, test {y1, y3}: hits at ranks 1 and 3 of 2 positives
#   u3 recs z1 z2 z3, test {q}:      no hit
RECS = _recs({"u1": ["x1", "x2", "x3"], "u2": ["y1", "y2", "y3"], "u3": ["z1", "z2", "z3"]})
TEST = _log([("u1", "x2"), ("u1", "x9"), ("u2", "y1"), ("u2", "y3"), ("u3", "q")])


def test_metrics_match_hand_computed_values():
    positives, _ = positives_of(TEST, None)
    means = mean_metrics(per_user_metrics(RECS, positives, (1, 3)), (1, 3))
    d2, d3 = 1 / math.log2(3), 1 / math.log2(4)
    recall3 = (1 / 2 + 2 / 2 + 0) / 3
    ndcg3 = (d2 / (1 + d2) + (1 + d3) / (1 + d2) + 0) / 3
    mrr3 = (1 / 2 + 1 + 0) / 3
    assert means["recall@3"] == pytest.approx(recall3)
    assert means["ndcg@3"] == pytest.approx(ndcg3)
    assert means["mrr@3"] == pytest.approx(mrr3)
    assert means["hit@3"] == pytest.approx(2 / 3)
    assert means["precision@3"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    # At K = 1 only u2's first item hits; its ideal DCG is over min(1, 2) = 1 hit.
    assert means["recall@1"] == pytest.approx((1 / 2) / 3)
    assert means["ndcg@1"] == pytest.approx(1 / 3)
    assert means["precision@1"] == pytest.approx(1 / 3)


def test_in_memory_ndcg_agrees_with_the_table_form():
    codes = {i: n for n, i in enumerate(sorted(set(RECS["item_id"]) | set(TEST["item_id"])))}
    topk = np.array([[codes[i] for i in RECS.filter(pl.col("user_id") == u)["item_id"]] for u in ("u1", "u2", "u3")])
    pos = [np.array([codes[i] for i in TEST.filter(pl.col("user_id") == u)["item_id"]]) for u in ("u1", "u2", "u3")]
    positives, _ = positives_of(TEST, None)
    table = mean_metrics(per_user_metrics(RECS, positives, (3,)), (3,))
    assert ndcg_of_topk(topk, pos, 3) == pytest.approx(table["ndcg@3"])


def test_user_without_recommendations_counts_as_zero_and_training_repeats_are_dropped():
    train = _log([("u1", "x9"), ("u4", "x1")])
    test = pl.concat([TEST, _log([("u4", "x2")])])
    ev = evaluate_recommendations(RECS, test, train, ks=(3,))
    # u1's x9 was already in training: dropped, leaving x2 (hit at rank 2) as its only positive.
    assert ev.counts["repeats_of_training_dropped"] == 1
    assert ev.counts["test_users"] == 4
    assert ev.counts["test_users_without_recommendations"] == 1
    per_user = dict(zip(ev.per_user["user_id"], ev.per_user["recall@3"]))
    assert per_user == {"u1": 1.0, "u2": 1.0, "u3": 0.0, "u4": 0.0}
    assert ev.metrics["recall@3"] == pytest.approx(2 / 4)
    assert ev.coverage["users_covered"] == pytest.approx(3 / 4)


def test_cold_item_and_history_slices():
    # x2 and y1 have training interactions (by other users), x9, y3 and q do not: cold.
    train = _log([("u3", "x2"), ("u3", "y1")] + [("u2", f"h{i}") for i in range(25)])
    ev = evaluate_recommendations(RECS, TEST, train, ks=(3,))
    cold = ev.slices["cold_items"]
    # Cold positives: u1 {x9}, u2 {y3}, u3 {q}; only u2's y3 (rank 3) is hit.
    assert cold["users"] == 3 and cold["positives"] == 3
    assert cold["metrics"]["recall@3"] == pytest.approx(1 / 3)
    labels = history_bucket_labels()
    assert ev.slices[f"history {labels[0]}"]["users"] == 1  # u1: no history
    assert ev.slices["history 20-49"]["users"] == 1  # u2: 25 items
    assert ev.counts["test_items_without_training"] == 3


def test_popularity_percentiles_and_catalogue_coverage():
    train = _log([(f"v{i}", "x1") for i in range(5)] + [("v0", "z3")])
    ev = evaluate_recommendations(RECS, TEST, train, ks=(3,), catalogue_item_ids=["x1", "extra"])
    # Catalogue: x1 z3 (train) + 9 recommended ids (x1, z3 among them) + "extra" = 10 items.
    assert ev.counts["catalogue_items"] == 10
    assert ev.coverage["catalogue_coverage"] == pytest.approx(9 / 10)
    # x1 is the most popular item (100th percentile); it is 1 of the 9 recommended rows.
    assert ev.popularity_percentiles.max() == pytest.approx(100.0)
    assert len(ev.popularity_percentiles) == 9


def test_unknown_users_are_counted_and_disjoint_ids_are_refused():
    test = pl.concat([TEST, _log([("stranger", "x1")])])
    ev = evaluate_recommendations(RECS, test, _log([("u1", "x5")]), ks=(3,))
    assert ev.counts["test_users_unknown"] == 1
    with pytest.raises(InputDataError, match=r"no test user appears in the run .*'1', '2'.*'u1', 'u2'"):
        evaluate_recommendations(RECS, _log([("1", "x1"), ("2", "x2")]), _log([("u1", "x5")]), ks=(3,))
    with pytest.raises(InputDataError, match="has no recommendations to evaluate"):
        evaluate_recommendations(RECS.head(0), TEST, TEST, ks=(3,))


def test_compare_finds_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(400)]
    a = pl.DataFrame({"user_id": users, "ndcg@10": rng.uniform(0, 0.4, 400)})
    better = a.with_columns(pl.col("ndcg@10") + 0.05)
    [d] = compare_per_user(a, better, ["ndcg@10"], n_bootstrap=500)
    assert d.delta == pytest.approx(0.05)
    assert d.significant and d.ci_low > 0 and d.p_value < 1e-6
    noise = a.with_columns(pl.Series("ndcg@10", rng.permutation(a["ndcg@10"].to_numpy())))
    [n] = compare_per_user(a, noise, ["ndcg@10"], n_bootstrap=500)
    assert n.ci_low < 0 < n.ci_high and not n.significant
    [same] = compare_per_user(a, a, ["ndcg@10"], n_bootstrap=100)
    assert same.p_value is None and same.delta == 0


def test_report_is_self_contained_html():
    ev = evaluate_recommendations(RECS, TEST, _log([("u3", "x2")]), ks=(1, 3))
    page = render_report({"A": ev, "B": ev}, title="t")
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3
    assert "src=\"http" not in page
