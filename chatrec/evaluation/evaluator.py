"""One run's recommendations scored against a test log: metrics, slices, coverage, bias.

    recommendations (user_id, rank, item_id) + test log + training log -> Evaluation

The training log is the set of interactions the run was given: its items are excluded from
the test positives (full ranking never recommends them), and it defines the slices
(cold-start items have no training interaction; users are bucketed by history length) and
item popularity (distinct training users per item).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from chatrec.errors import InputDataError
from chatrec.evaluation.metrics import PRIMARY_METRIC, mean_metrics, per_user_metrics, positives_of

# Users by training-history length. MovieLens-style logs start at ~20 interactions a user;
# sparse commerce logs are mostly below 5: these edges separate both regimes.
HISTORY_BUCKETS = (1, 5, 20, 50, 100, 200)


def history_bucket_labels() -> list[str]:
    edges = (0, *HISTORY_BUCKETS)
    labels = ["0"] + [f"{lo}-{hi - 1}" for lo, hi in zip(edges[1:], edges[2:])]
    return labels + [f"{HISTORY_BUCKETS[-1]}+"]


@dataclass(frozen=True)
class Evaluation:
    ks: tuple[int, ...]
    metrics: dict[str, float]  # metric@k -> mean over test users
    per_user: pl.DataFrame  # user_id, n_positives, history_len, metric@k columns
    slices: dict[str, dict]  # slice name -> {"users": n, "metrics": {...}}
    coverage: dict[str, float]
    counts: dict[str, int]
    popularity_percentiles: np.ndarray = field(repr=False)  # (n_recommended_rows,)

    @property
    def primary_metric(self) -> str:
        """ndcg@10, or NDCG at the middle cut-off when 10 is not among them."""
        return PRIMARY_METRIC if PRIMARY_METRIC in self.metrics else f"ndcg@{self.ks[len(self.ks) // 2]}"

    def to_dict(self) -> dict:
        return {
            "primary_metric": self.primary_metric,
            "primary": self.metrics.get(self.primary_metric),
            "ks": list(self.ks),
            "metrics": self.metrics,
            "slices": self.slices,
            "coverage": self.coverage,
            "counts": self.counts,
        }


def evaluate_recommendations(
    recs: pl.DataFrame,
    test: pl.DataFrame,
    train: pl.DataFrame,
    *,
    ks: tuple[int, ...],
    catalogue_item_ids: list[str] | None = None,
    run_name: str = "the run",
) -> Evaluation:
    """Score `recs` (user_id, rank, item_id) against `test` given training log `train`.

    Ids are compared as strings. Test users or items the run never saw are counted, not
    errors; but a test log that shares no user with the run or its training log is
    almost always an id mix-up, and that is an InputDataError.
    """
    ks = tuple(sorted(set(ks)))
    if recs.height == 0:
        raise InputDataError(f"{run_name} has no recommendations to evaluate")
    if test.height == 0:
        raise InputDataError("the test log has no valid interactions")
    known_users = pl.concat([recs["user_id"].unique(), train["user_id"].unique()]).unique()
    test_users = test["user_id"].unique()
    if not test_users.is_in(known_users.implode()).any():
        raise InputDataError(
            f"no test user appears in {run_name} or its training log "
            f"(test user ids look like {_sample(test_users)}, the run's like {_sample(known_users)}): "
            "are both tables from the same data set, with ids of the same kind?"
        )

    positives, repeats = positives_of(test, train)
    history = train.group_by("user_id").agg(pl.col("item_id").n_unique().alias("history_len"))
    per_user = per_user_metrics(recs, positives, ks).join(history, on="user_id", how="left").with_columns(
        pl.col("history_len").fill_null(0)
    )
    train_items = train["item_id"].unique()
    catalogue = pl.concat(
        [train_items, recs["item_id"].unique(), pl.Series("item_id", catalogue_item_ids or [], pl.String)]
    ).unique()
    popularity = _popularity_percentiles(train, catalogue)
    top = recs.filter(pl.col("rank") <= max(ks))
    rec_percentiles = top.join(popularity, on="item_id", how="left")["percentile"].fill_null(0.0).to_numpy()

    return Evaluation(
        ks=ks,
        metrics=mean_metrics(per_user, ks),
        per_user=per_user,
        slices={
            "cold_items": _cold_item_slice(recs, positives, train_items, ks),
            **_history_slices(per_user, ks),
        },
        coverage={
            "users_covered": float(per_user["user_id"].is_in(recs["user_id"].unique().implode()).mean()),
            "catalogue_coverage": top["item_id"].n_unique() / max(catalogue.len(), 1),
            "mean_popularity_percentile": float(rec_percentiles.mean()) if len(rec_percentiles) else 0.0,
        },
        counts={
            "test_users": per_user.height,
            "test_interactions": test.height,
            "test_positives": positives.height,
            "repeats_of_training_dropped": repeats,
            "test_users_without_recommendations": int(
                (~per_user["user_id"].is_in(recs["user_id"].unique().implode())).sum()
            ),
            "test_users_unknown": int((~test_users.is_in(known_users.implode())).sum()),
            "test_items_unknown": int((~positives["item_id"].unique().is_in(catalogue.implode())).sum()),
            "test_items_without_training": int((~positives["item_id"].unique().is_in(train_items.implode())).sum()),
            "catalogue_items": catalogue.len(),
        },
        popularity_percentiles=rec_percentiles,
    )


def _sample(ids: pl.Series, n: int = 3) -> str:
    return ", ".join(repr(v) for v in ids.sort().head(n).to_list())


def _popularity_percentiles(train: pl.DataFrame, catalogue: pl.Series) -> pl.DataFrame:
    """item_id -> percentile (0-100) of its distinct training users among catalogue items.

    Ties share their average rank; an item nobody interacted with sits at the bottom.
    """
    counts = train.group_by("item_id").agg(pl.col("user_id").n_unique().alias("users"))
    items = pl.DataFrame({"item_id": catalogue}).join(counts, on="item_id", how="left").with_columns(
        pl.col("users").fill_null(0)
    )
    return items.select(
        "item_id", (pl.col("users").rank("average") / pl.len() * 100.0).alias("percentile")
    )


def _cold_item_slice(recs: pl.DataFrame, positives: pl.DataFrame, train_items: pl.Series, ks) -> dict:
    """Metrics over test positives whose item has no training interaction (cold start)."""
    cold = positives.filter(~pl.col("item_id").is_in(train_items.implode()))
    per_user = per_user_metrics(recs, cold, ks)
    return {"users": per_user.height, "positives": cold.height, "metrics": mean_metrics(per_user, ks)}


def _history_slices(per_user: pl.DataFrame, ks) -> dict[str, dict]:
    labels = history_bucket_labels()
    buckets = np.searchsorted(np.array(HISTORY_BUCKETS), per_user["history_len"].to_numpy(), side="right")
    out = {}
    for b, label in enumerate(labels):
        members = per_user.filter(pl.Series(buckets == b))
        if members.height:
            out[f"history {label}"] = {"users": members.height, "metrics": mean_metrics(members, ks)}
    return out
