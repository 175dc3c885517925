"""Grid search on a validation log: fit on train, score NDCG@10 on valid, keep the best.

Each validation user with a training history is recommended top max(10, K) items (their
training items excluded); their positives are their validation items not already in their
training items. Items first seen in validation keep a place in the ideal ranking (they
count as positives nobody can hit), as they would in an evaluation of the final run. Users
first seen in validation cannot be scored by a model fitted on train and are left out.
The best grid point wins; ties go to the earlier point. An epoch-trained baseline (SASRec)
has no grid: it trains once on train, scored on valid as it goes, and the epoch count of
its best score is the parameter tuned (early stopping; ties go to the earlier epoch).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from chatrec.baselines.base import Baseline, EpochTrainedBaseline, FittedBaseline, jsonable_params
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.baselines.lowrank import STAGES as LOWRANK_STAGES
from chatrec.baselines.recommend import recommend_codes
from chatrec.evaluation.metrics import ndcg_of_topk

logger = logging.getLogger(__name__)

METRIC_K = 10
METRIC = f"ndcg@{METRIC_K}"

# Grids, walked in this order (ties go to the earlier point). Each is small enough that
# tuning on MovieLens-100K (943 users x 1,682 items) takes seconds on 2 cores.
GRIDS: dict[str, dict[str, list[Any]]] = {
    # Sparse neighbourhoods of 20 to 400 items, doubling roughly, plus every co-occurring
    # item (None = "all"); 1,682 items means 400 is already a quarter of the catalogue.
    "itemknn": {"neighbors": [20, 50, 100, 200, 400, None]},
    # lambda is on the scale of the co-occurrence counts: ML-100K-sized logs peak in the
    # hundreds, so doubling steps from 50 to 1,600 bracket the optimum (6 inversions).
    "ease": {"l2": [50.0, 100.0, 200.0, 400.0, 800.0, 1600.0]},
    # The middle of the EASE range (4 inversions), times tau in steps of the user's own
    # interactions: 1 (the last item dominates) to 50 (a long memory), plus inf (= EASE).
    # B is computed once per lambda and reused for the 6 taus.
    "ease-recency": {"l2": [100.0, 200.0, 400.0, 800.0], "tau": [1.0, 3.0, 10.0, 20.0, 50.0, math.inf]},
}
# Grids walked one stage at a time, each stage's best values fixed for the next: a full grid
# of the low-rank model costs (users x rank x items) per point, too much for 96 points on a
# large catalogue; tau first (it moves NDCG the most on time splits), then rank x lambda.
STAGED_GRIDS: dict[str, list[dict[str, list[Any]]]] = {"lowrank-recency": LOWRANK_STAGES}


def grid_points(baseline: Baseline, grid: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """Every combination of the grid (first key outermost), over the baseline's defaults."""
    grid = GRIDS.get(baseline.name, {}) if grid is None else grid
    if not grid:
        return []
    keys = list(grid)
    return [
        baseline.resolve_params(dict(zip(keys, values)))
        for values in itertools.product(*(grid[k] for k in keys))
    ]


def tunable(baseline: Baseline) -> bool:
    """Whether `tune` has a grid to walk (or epochs to count) for this baseline."""
    return bool(grid_points(baseline)) or baseline.name in STAGED_GRIDS or isinstance(baseline, EpochTrainedBaseline)


def needs_tuning(baseline: Baseline, given: Mapping[str, Any] | None) -> bool:
    """Whether the job tunes on valid: a grid baseline unless parameters are given (they
    replace the whole grid), an epoch-trained one unless `epochs` is among them (its other
    parameters shape the training that validation stops)."""
    if isinstance(baseline, EpochTrainedBaseline):
        return baseline.resolve_params(given)["epochs"] is None
    return given is None and tunable(baseline)


@dataclass(frozen=True)
class TuningResult:
    best_params: dict[str, Any]
    scores: list[dict[str, Any]]  # [{"params": ..., "ndcg@10": ...}] in grid order
    users: int  # validation users scored
    cold_users: int  # validation users without a training history: not scored
    early_stopping: dict[str, Any] | None = None  # an epoch-trained baseline's EarlyStopping.to_manifest()

    def to_manifest(self) -> dict[str, Any]:
        out = {
            "metric": METRIC,
            "on": "valid",
            "users": self.users,
            "cold_users_skipped": self.cold_users,
            "best": jsonable_params(self.best_params),
            "grid": [{"params": jsonable_params(s["params"]), METRIC: s[METRIC]} for s in self.scores],
        }
        if self.early_stopping is not None:
            out["early_stopping"] = self.early_stopping
        return out


@dataclass(frozen=True)
class ValidationTargets:
    users: np.ndarray  # (n,) user codes in the train matrix
    positives: list[np.ndarray]  # n arrays of item codes (codes >= n_items: items unseen in train)
    cold_users: int


def validation_targets(train: InteractionMatrix, valid: pa.Table | pl.DataFrame) -> ValidationTargets:
    df = valid if isinstance(valid, pl.DataFrame) else pl.from_arrow(valid)
    pairs = df.select("user_id", "item_id").unique().sort("user_id", "item_id")
    users = train.user_codes(pairs["user_id"].to_list())  # (p,)
    cold = pairs.filter(pl.Series(users < 0))["user_id"].n_unique()
    items = train.item_codes(pairs["item_id"].to_list())  # (p,)
    new = items < 0
    # Items the train matrix has no column for get distinct codes past its last item.
    new_ids = pairs["item_id"].to_numpy()[new]
    items[new] = train.n_items + np.unique(new_ids, return_inverse=True)[1]
    keep = users >= 0
    known = keep & ~new
    seen = np.zeros(len(pairs), dtype=bool)
    if known.any():
        seen[known] = np.asarray(train.X[users[known], items[known]]).ravel() > 0
    keep &= ~seen
    users, items = users[keep], items[keep]
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    unique_users, starts = np.unique(users, return_index=True)
    positives = np.split(items, starts[1:]) if len(unique_users) else []
    return ValidationTargets(unique_users, positives, cold)


def validation_scorer(targets: ValidationTargets, top_k: int = METRIC_K) -> Callable[[FittedBaseline], float]:
    """model -> its NDCG@10 on the validation targets (top max(10, K) recommended, as published)."""
    k = max(METRIC_K, top_k)

    def score(model: FittedBaseline) -> float:
        topk = recommend_codes(model, targets.users, k)  # (n, k)
        return ndcg_of_topk(topk, targets.positives, k=METRIC_K)

    return score


def tune(
    baseline: Baseline,
    train: InteractionMatrix,
    valid: pa.Table | pl.DataFrame,
    *,
    top_k: int = METRIC_K,
    grid: dict[str, list[Any]] | None = None,
    params: Mapping[str, Any] | None = None,
) -> TuningResult:
    """Fit each grid point on `train`, score NDCG@10 on `valid`, keep the first best. A
    baseline with STAGED_GRIDS (and no `grid` given) is tuned one stage at a time; an
    epoch-trained one (with `params`, its fixed parameters) by early stopping."""
    if isinstance(baseline, EpochTrainedBaseline):
        return _tune_epochs(baseline, train, valid, top_k, baseline.resolve_params(params))
    if grid is None and baseline.name in STAGED_GRIDS:
        return _tune_staged(baseline, train, valid, top_k, STAGED_GRIDS[baseline.name])
    points = grid_points(baseline, grid)
    targets = validation_targets(train, valid)
    if not points or len(targets.users) == 0:
        if points:
            logger.warning("%s: no validation user has a training history and a new item; using defaults",
                           baseline.name)
        return TuningResult(baseline.resolve_params(None), [], len(targets.users), targets.cold_users)
    scorer = validation_scorer(targets, top_k)
    scores: list[dict[str, Any]] = []
    best_params, best_score = points[0], -1.0
    for point, model in baseline.fit_grid(train, points):
        score = scorer(model)
        scores.append({"params": point, METRIC: score})
        logger.info("%s %s: %s = %.4f", baseline.name, jsonable_params(point), METRIC, score)
        if score > best_score:
            best_params, best_score = point, score
    return TuningResult(best_params, scores, len(targets.users), targets.cold_users)


def _tune_epochs(baseline: EpochTrainedBaseline, train: InteractionMatrix, valid, top_k: int,
                 params: dict[str, Any]) -> TuningResult:
    """Train on `train` with early stopping on `valid`; the epoch count at the best score is
    the tuned parameter. The grid lists every evaluated epoch."""
    targets = validation_targets(train, valid)
    if len(targets.users) == 0:
        logger.warning("%s: no validation user has a training history and a new item; training max_epochs (%d)",
                       baseline.name, params["max_epochs"])
        return TuningResult({**params, "epochs": params["max_epochs"]}, [], 0, targets.cold_users)
    _, stopping = baseline.fit_early_stopped(train, params, validation_scorer(targets, top_k))
    scores = [{"params": {"epochs": h["epoch"]}, METRIC: h[METRIC]} for h in stopping.history]
    return TuningResult({**params, "epochs": stopping.best_epoch}, scores, len(targets.users), targets.cold_users,
                        early_stopping=stopping.to_manifest())


def _tune_staged(baseline: Baseline, train: InteractionMatrix, valid, top_k: int,
                 stages: list[dict[str, list[Any]]]) -> TuningResult:
    """Each stage's grid over the best values of the stages before it (defaults at first)."""
    fixed: dict[str, Any] = {}
    scores: list[dict[str, Any]] = []
    result = None
    for stage in stages:
        result = tune(baseline, train, valid, top_k=top_k, grid={**{k: [v] for k, v in fixed.items()}, **stage})
        scores += result.scores
        fixed = {k: result.best_params[k] for k in (*fixed, *stage)}
    return TuningResult(result.best_params, scores, result.users, result.cold_users)
