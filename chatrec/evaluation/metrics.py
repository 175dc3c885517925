"""Top-K ranking metrics over recommendation tables, with RecBole's definitions.

Full ranking: a recommender ranks the whole catalogue, each user's training items left
out; its top-K rows are compared with the user's test items (binary relevance). For each
test user (a user with at least one test item not already in their training history):

    Recall@K     hits in the top K / number of test items
    NDCG@K       DCG / ideal DCG, DCG = sum over hits of 1 / log2(rank + 1), ideal DCG over
                 min(K, number of test items) hits at ranks 1, 2, ...
    MRR@K        1 / rank of the first hit in the top K (0 without one)
    Hit@K        1 if the top K holds a test item, else 0
    Precision@K  hits in the top K / K

Means are taken over test users; a test user without recommendations scores 0 on every
metric. All work is Polars joins and group-bys, so it scales with the number of rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from chatrec.errors import ConfigError

METRICS = ("recall", "ndcg", "mrr", "hit", "precision")
DEFAULT_KS = (5, 10, 20)
PRIMARY_METRIC = "ndcg@10"


def parse_ks(text: str) -> tuple[int, ...]:
    """`--k 5,10,20` -> (5, 10, 20), sorted and distinct."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise ConfigError(f"--k must be comma-separated positive integers, e.g. 5,10,20; got {text!r}")
    return ks


def metric_names(ks: tuple[int, ...]) -> list[str]:
    return [f"{m}@{k}" for m in METRICS for k in ks]


def positives_of(test: pl.DataFrame, train: pl.DataFrame | None) -> tuple[pl.DataFrame, int]:
    """Distinct (user_id, item_id) test pairs not already in that user's training history.

    Returns the positives and how many test pairs were dropped as repeats of a training
    interaction (full ranking leaves training items out, so they can never be hit).
    """
    pairs = test.select("user_id", "item_id").unique()
    if train is None:
        return pairs, 0
    kept = pairs.join(train.select("user_id", "item_id").unique(), on=["user_id", "item_id"], how="anti")
    return kept, pairs.height - kept.height


def per_user_metrics(recs: pl.DataFrame, positives: pl.DataFrame, ks: tuple[int, ...]) -> pl.DataFrame:
    """One row per test user: user_id, n_positives, and every metric@k as a column.

    `recs` has user_id, item_id, rank (1-based); `positives` has user_id, item_id.
    """
    ks = tuple(sorted(set(ks)))
    users = positives.group_by("user_id").agg(pl.len().alias("n_positives"))
    hits = (
        recs.filter(pl.col("rank") <= max(ks))
        .select("user_id", "item_id", "rank")
        .join(positives, on=["user_id", "item_id"], how="semi")
    )
    # ideal_dcg[j] = sum_{r=1..j+1} 1/log2(r + 1): the DCG of j + 1 hits at the top.
    ideal_dcg = np.cumsum(1.0 / np.log2(np.arange(2, max(ks) + 2)))  # (max_k,)
    out = users
    for k in ks:
        per_user = (
            hits.filter(pl.col("rank") <= k)
            .group_by("user_id")
            .agg(
                pl.len().alias("_hits"),
                (1.0 / (pl.col("rank").cast(pl.Float64) + 1.0).log(2)).sum().alias("_dcg"),
                pl.col("rank").min().alias("_first"),
            )
        )
        out = out.join(per_user, on="user_id", how="left").with_columns(
            pl.col("_hits").fill_null(0), pl.col("_dcg").fill_null(0.0)
        )
        n_pos = out["n_positives"].to_numpy()  # (n_users,)
        ideal = ideal_dcg[np.minimum(n_pos, k) - 1]  # (n_users,)
        out = out.with_columns(
            (pl.col("_hits") / pl.col("n_positives")).alias(f"recall@{k}"),
            (pl.col("_dcg") / pl.Series(ideal)).alias(f"ndcg@{k}"),
            (1.0 / pl.col("_first").cast(pl.Float64)).fill_null(0.0).alias(f"mrr@{k}"),
            (pl.col("_hits") > 0).cast(pl.Float64).alias(f"hit@{k}"),
            (pl.col("_hits") / k).alias(f"precision@{k}"),
        ).drop("_hits", "_dcg", "_first")
    return out.select("user_id", "n_positives", *metric_names(ks)).sort("user_id")


def mean_metrics(per_user: pl.DataFrame, ks: tuple[int, ...]) -> dict[str, float]:
    """Mean of each metric over the rows of `per_user` (0.0 for no rows)."""
    names = metric_names(tuple(sorted(set(ks))))
    if per_user.height == 0:
        return {n: 0.0 for n in names}
    means = per_user.select(pl.col(names).mean()).row(0)
    return {n: float(v) for n, v in zip(names, means)}


def ndcg_of_topk(topk: np.ndarray, positives: list[np.ndarray], k: int) -> float:
    """Mean NDCG@k of (n, >=k) item-code lists against each user's positive codes.

    The in-memory form of `per_user_metrics` for hyperparameter search, where
    recommendations never leave numpy; users with no positives are skipped.
    """
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    ideal = np.cumsum(discount)  # (k,)
    scores = []
    for row, pos in zip(topk[:, :k], positives):
        if len(pos) == 0:
            continue
        hit = np.isin(row, pos)  # (<= k,): a catalogue smaller than k gives shorter lists
        scores.append(float(discount[: len(hit)][hit].sum() / ideal[min(k, len(pos)) - 1]))
    return float(np.mean(scores)) if scores else 0.0
