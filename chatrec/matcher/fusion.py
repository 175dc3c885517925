"""Hybrid scoring: the two-tower score fused with recency-weighted EASE's collaborative score.

    fused(u, i) = w * tower(u, i) / sd_tower + (1 - w) * ease(u, i) / sd_ease

Each source is divided by its spread over the validation users' scores, so `w` weighs
comparable numbers. EASE's lambda and tau, then `w`, are tuned on the matcher's own
validation hold-out by NDCG@10; the final EASE is refit on every interaction. A fused row
names the signal that carried it: the larger of its two terms.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from chatrec.baselines.base import jsonable_params
from chatrec.baselines.ease import EaseRecency
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.item_item import ItemItemModel
from chatrec.baselines.topk import top_k_excluding
from chatrec.baselines.tuning import tune, validation_targets
from chatrec.evaluation.metrics import ndcg_of_topk

logger = logging.getLogger(__name__)

# w from pure EASE (0) to the pure two-tower score (1) in steps of 0.1: finer steps move
# validation NDCG@10 by less than its noise on MovieLens-sized data.
WEIGHTS = tuple(round(w, 1) for w in np.linspace(0.0, 1.0, 11))
VALIDATION_K = 10
# Without validation users nothing can be tuned, not even the scales that make the two scores
# comparable: the two-tower score alone.
UNTUNED_WEIGHT = 1.0


@dataclass(frozen=True)
class Fusion:
    weight: float  # w: the two-tower score's share
    tower_scale: float  # 1 / sd of the two-tower scores
    collaborative_scale: float  # 1 / sd of EASE's scores
    ease_params: dict
    validation: list[dict]  # every w with its validation NDCG@10

    def terms(self, tower: np.ndarray, collaborative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, m) raw scores of each source -> their two weighted terms, (n, m) each."""
        return (
            self.weight * self.tower_scale * tower,
            (1.0 - self.weight) * self.collaborative_scale * collaborative,
        )

    def manifest(self) -> dict:
        return {"weight": self.weight, "ease": jsonable_params(self.ease_params), "validation": self.validation}


def _scale(scores: np.ndarray) -> float:
    return float(1.0 / max(np.std(scores), 1e-12))


def tune_fusion(
    *, train_log: pl.DataFrame, valid_log: pl.DataFrame, item_ids: list[str], tower_scores_of,
) -> Fusion:
    """Tune EASE-recency, then w, on the validation hold-out.

    `tower_scores_of(user_ids) -> (n, n_items)` gives the trained two-tower scores of the
    validation users from their training histories (item columns in `item_ids` order).
    """
    matrix = build_interaction_matrix(train_log, item_universe=item_ids)
    ease_tuning = tune(EaseRecency(), matrix, valid_log, top_k=VALIDATION_K)
    ease = EaseRecency().fit(matrix, ease_tuning.best_params)
    targets = validation_targets(matrix, valid_log)
    users = targets.users  # (n,) user codes in `matrix`
    if len(users) == 0:
        logger.warning("fusion: no validation user to tune on; two-tower weight %.1f, EASE defaults", UNTUNED_WEIGHT)
        return Fusion(UNTUNED_WEIGHT, 1.0, 1.0, dict(ease_tuning.best_params), [])
    tower = tower_scores_of([matrix.user_ids[u] for u in users])  # (n, n_items)
    collaborative = ease.scores(users)  # (n, n_items)
    seen = matrix.X[users]  # (n, n_items) each user's training items
    scales = (_scale(tower), _scale(collaborative))
    results, best = [], None
    for w in WEIGHTS:
        fusion = Fusion(w, *scales, ease_tuning.best_params, [])
        fused = sum(fusion.terms(tower, collaborative))  # (n, n_items)
        top = top_k_excluding(fused, seen, VALIDATION_K).codes  # (n, k)
        score = ndcg_of_topk(top, targets.positives, VALIDATION_K)
        results.append({"weight": w, "ndcg@10": score})
        if best is None or score > best[1]:
            best = (w, score)
    logger.info("fusion: w = %.1f (validation NDCG@10 %.4f; EASE-recency %s)", best[0], best[1], ease_tuning.best_params)
    return Fusion(best[0], *scales, dict(ease_tuning.best_params), results)


def collaborative_model(log: pl.DataFrame, item_ids: list[str], fusion: Fusion) -> ItemItemModel:
    """EASE-recency refit on every interaction with the tuned parameters, for scoring."""
    matrix = build_interaction_matrix(log, item_universe=item_ids)
    return EaseRecency().fit(matrix, fusion.ease_params)
