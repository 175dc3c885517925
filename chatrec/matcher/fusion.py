"""Hybrid scoring: the two-tower score fused with recency-weighted EASE's collaborative score.

    fused(u, i) = w * tower(u, i) / sd_tower + (1 - w) * ease(u, i) / sd_ease

Each source is divided by its spread over the validation users' scores, so `w` weighs
comparable numbers. EASE's lambda and tau, then `w`, are tuned on the matcher's own
validation hold-out by NDCG@10; the final EASE is refit on every interaction. A fused row
names the signal that carried it: the larger of its two terms.

An item without an id vector (no training interactions: a new item) has no EASE score
either. For those items the missing collaborative term is replaced by

    new(u, i) = c * (content(u, i) - mean_j content(u, j)) / sd_content + b

where content is the zero-shot text score (the user's recency-weighted mean of history
text vectors against the item's text vector, the `content` baseline's score), centred on
each user's mean over the catalogue so that c reorders new items and b alone sets their
level. c and b are tuned after w, on the same validation hold-out with a seeded share of
the known items pretending to be new (their tower score from text alone, their EASE score
0): the hold-out has no real new item to learn from. Such a row is "content" when its text
term is the larger, else "two-tower".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

import pyarrow as pa

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
# The new-item term's grids: c in units of the text score's spread, b in units of the fused
# score's (the two other terms are in units of their spreads too, and w + (1 - w) = 1).
COLD_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
COLD_OFFSETS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
# The zero-shot text score's user profile: HistoryConfig's defaults (the `content` baseline's).
CONTENT_HISTORY, CONTENT_HALF_LIFE = 50, 10.0


@dataclass(frozen=True)
class Fusion:
    weight: float  # w: the two-tower score's share
    tower_scale: float  # 1 / sd of the two-tower scores
    collaborative_scale: float  # 1 / sd of EASE's scores
    ease_params: dict
    validation: list[dict]  # every w with its validation NDCG@10
    cold_weight: float = 0.0  # c: the zero-shot text score's share for items without an id
    content_scale: float = 1.0  # 1 / sd of the zero-shot text scores, each user's centred
    cold_offset: float = 0.0  # b: added to an item without an id, in fused-score units
    cold_validation: tuple[dict, ...] = ()  # every (c, b) with its validation NDCG@10

    def terms(self, tower: np.ndarray, collaborative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, m) raw scores of each source -> their two weighted terms, (n, m) each."""
        return (
            self.weight * self.tower_scale * tower,
            (1.0 - self.weight) * self.collaborative_scale * collaborative,
        )

    def new_item_terms(self, content: np.ndarray, id_less: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """content (n, m) zero-shot text scores, id_less (m,) bool -> the new-item text term
        (n, m) and the offset (m,), both 0 for items with an id."""
        centred = content - content.mean(axis=1, keepdims=True)  # (n, m)
        text_term = np.where(id_less[None, :], self.cold_weight * self.content_scale * centred, 0.0)  # (n, m)
        return text_term, np.where(id_less, self.cold_offset, 0.0)  # (n, m), (m,)

    def manifest(self) -> dict:
        return {"weight": self.weight, "ease": jsonable_params(self.ease_params), "validation": self.validation,
                "tower_scale": self.tower_scale, "collaborative_scale": self.collaborative_scale,
                "new_items": {"text_weight": self.cold_weight, "offset": self.cold_offset,
                              "content_scale": self.content_scale, "validation": list(self.cold_validation)}}

    @classmethod
    def from_manifest(cls, record: dict) -> "Fusion":
        """The fusion a run recorded (to resume it, or to reuse it in a refresh)."""
        new = record.get("new_items") or {}  # absent from runs before the new-item term: none
        return cls(float(record["weight"]), float(record["tower_scale"]), float(record["collaborative_scale"]),
                   {k: float("inf") if v == "inf" else v for k, v in record["ease"].items()},
                   list(record.get("validation", [])), float(new.get("text_weight", 0.0)),
                   float(new.get("content_scale", 1.0)), float(new.get("offset", 0.0)),
                   tuple(new.get("validation", ())))


def content_scores(text: np.ndarray, recent_rows: pa.ListArray) -> np.ndarray:
    """The zero-shot text score: text (n_items, d) unit text vectors, n users' newest-first
    rows -> (n, n_items) cosine of each user's recency-weighted mean text vector."""
    from chatrec.user_vectors import recency_weighted_mean

    profile = recency_weighted_mean(text, recent_rows, CONTENT_HALF_LIFE)  # (n, d)
    return profile @ text.T  # (n, n_items)


def _scale(scores: np.ndarray) -> float:
    return float(1.0 / max(np.std(scores), 1e-12))


def tune_fusion(
    *, train_log: pl.DataFrame, valid_log: pl.DataFrame, item_ids: list[str], tower_scores_of,
    new_items: dict | None = None,
) -> Fusion:
    """Tune EASE-recency, then w, then the new-item term, on the validation hold-out.

    `tower_scores_of(user_ids) -> (n, n_items)` gives the trained two-tower scores of the
    validation users from their training histories (item columns in `item_ids` order).
    `new_items` (optional; without it no new-item term) holds "text" (n_items, d) unit text
    vectors, "has_id" (n_items,) bool, "text_only_scores_of" (user_ids -> (n, n_items) tower
    scores with every item placed by its text alone), "share" (of the known items that
    pretend to be new) and "seed".
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
    fusion = Fusion(best[0], *scales, dict(ease_tuning.best_params), results)
    if new_items is None or new_items["share"] <= 0:
        return fusion
    return _tune_new_items(fusion, matrix, users, targets.positives, seen, tower, collaborative, new_items)


def _tune_new_items(fusion: Fusion, matrix, users: np.ndarray, positives: list, seen, tower: np.ndarray,
                    collaborative: np.ndarray, new_items: dict) -> Fusion:
    """c and b of the new-item term, w fixed, with a seeded share of the known items made
    new: their tower scores from text alone, their EASE scores 0. Items with no interaction
    at all are left out of this ranking: the hold-out cannot say whether they belong in it."""
    has_id = np.asarray(new_items["has_id"], bool)  # (n_items,)
    known = np.flatnonzero(has_id)
    rng = np.random.default_rng(new_items["seed"])
    pretend = np.zeros(len(has_id), bool)  # (n_items,)
    pretend[rng.choice(known, size=int(round(new_items["share"] * len(known))), replace=False)] = True
    user_ids = [matrix.user_ids[u] for u in users]
    text_only = new_items["text_only_scores_of"](user_ids)  # (n, n_items)
    tower = np.where(pretend[None, :], text_only, tower)  # (n, n_items)
    collaborative = np.where(pretend[None, :], 0.0, collaborative)  # (n, n_items)
    # Each validation user's newest-first training items, as the top-K stage reads them.
    recent = [matrix.history(u)[:CONTENT_HISTORY] for u in users]
    content = content_scores(new_items["text"], pa.array([r.tolist() for r in recent], pa.list_(pa.int64())))  # (n, n_items)
    content_scale = _scale(content - content.mean(axis=1, keepdims=True))  # as new_item_terms centres it
    excluded = seen.tolil(copy=True)
    excluded[:, np.flatnonzero(~has_id)] = 1  # (n, n_items): seen, and never interacted with
    excluded = excluded.tocsr()
    base = sum(fusion.terms(tower, collaborative))  # (n, n_items)
    results, best = [], None
    for c in COLD_WEIGHTS:
        for b in COLD_OFFSETS:
            trial = Fusion(fusion.weight, fusion.tower_scale, fusion.collaborative_scale, fusion.ease_params, [],
                           c, content_scale, b)
            text_term, offset = trial.new_item_terms(content, pretend)  # (n, n_items), (n_items,)
            top = top_k_excluding(base + text_term + offset[None, :], excluded, VALIDATION_K).codes  # (n, k)
            score = ndcg_of_topk(top, positives, VALIDATION_K)
            results.append({"text_weight": c, "offset": b, "ndcg@10": score})
            if best is None or score > best[2]:
                best = (c, b, score)
    logger.info("fusion: new items c = %.2f, b = %.2f (validation NDCG@10 %.4f, %d known items as new)",
                best[0], best[1], best[2], int(pretend.sum()))
    return Fusion(fusion.weight, fusion.tower_scale, fusion.collaborative_scale, fusion.ease_params,
                  fusion.validation, best[0], content_scale, best[1], tuple(results))


def collaborative_model(log: pl.DataFrame, item_ids: list[str], fusion: Fusion) -> ItemItemModel:
    """EASE-recency refit on every interaction with the tuned parameters, for scoring."""
    matrix = build_interaction_matrix(log, item_universe=item_ids)
    return EaseRecency().fit(matrix, fusion.ease_params)
