"""Hybrid scoring: the two-tower score fused with a recency-weighted collaborative score.

    fused(u, i) = w * tower(u, i) / sd_tower + (1 - w) * collaborative(u, i) / sd_collaborative

The collaborative partner is recency-weighted EASE ("ease-recency", dense item x item: only
for catalogues up to EASE's size) or its low-rank relative ("lowrank-recency",
chatrec.baselines.lowrank: (items x rank) numbers, any catalogue). Each candidate partner's
own parameters are tuned on the matcher's validation hold-out by NDCG@10, then `w` for
each; the partner whose fusion validates best is kept (a tie keeps EASE), and the manifest
records every candidate's score and why the kept one ran. The final partner is refit on
every interaction.

Each source is divided by its spread over the validation users' scores, so `w` weighs
comparable numbers. A fused row names the signal that carried it: the larger of its two terms.

An item without an id vector (no training interactions: a new item) has no collaborative
score either. For those items the missing collaborative term is replaced by

    new(u, i) = c * (content(u, i) - mean_j content(u, j)) / sd_content + b

where content is the zero-shot text score (the user's recency-weighted mean of history
text vectors against the item's text vector, the `content` baseline's score), centred on
each user's mean over the catalogue so that c reorders new items and b alone sets their
level. c and b are tuned after w, on the same validation hold-out with a seeded share of
the known items pretending to be new (their tower score from text alone, their
collaborative score 0): the hold-out has no real new item to learn from. Such a row is
"content" when its text term is the larger, else "two-tower".

With the low-rank partner every term is an inner product, so the fused score is one too
(`FusedVectors`): the top-K stage runs one exact FAISS search over concatenated,
pre-weighted user and item vectors instead of scoring every item densely.

Tuning scores at most TUNING_USERS validation users (a seeded sample), TUNING_BLOCK users
at a time: its cost and its dense (users, items) score matrices stay bounded however many
users the log has.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

import pyarrow as pa

from chatrec.baselines.base import jsonable_params
from chatrec.baselines.ease import MAX_EASE_ITEMS
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.registry import get_baseline
from chatrec.baselines.topk import top_k_excluding
from chatrec.baselines.tuning import tune, validation_targets
from chatrec.evaluation.metrics import ndcg_of_topk

logger = logging.getLogger(__name__)

# w from pure collaborative (0) to the pure two-tower score (1) in steps of 0.1: finer steps
# move validation NDCG@10 by less than its noise on MovieLens-sized data.
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
# The collaborative partners, in order of preference when they validate equally.
EASE, LOW_RANK = "ease-recency", "lowrank-recency"
# Validation users the tuning scores: at most 4,096, fewer for large catalogues so that the
# tuning's cost (a dense score per user and item, per grid point) stays near that of 4,096
# users x 65,536 items, and never fewer than 500. They are scored TUNING_BLOCK at a time:
# each dense (users, items) matrix holds at most that many users.
TUNING_USERS, TUNING_CELLS, MIN_TUNING_USERS = 4096, 2**28, 500
TUNING_BLOCK = 1024
TUNING_SEED = 0


@dataclass(frozen=True)
class Fusion:
    weight: float  # w: the two-tower score's share
    tower_scale: float  # 1 / sd of the two-tower scores
    collaborative_scale: float  # 1 / sd of the collaborative partner's scores
    partner_params: dict  # the partner's tuned parameters
    validation: list[dict]  # every w with its validation NDCG@10
    cold_weight: float = 0.0  # c: the zero-shot text score's share for items without an id
    content_scale: float = 1.0  # 1 / sd of the zero-shot text scores, each user's centred
    cold_offset: float = 0.0  # b: added to an item without an id, in fused-score units
    cold_validation: tuple[dict, ...] = ()  # every (c, b) with its validation NDCG@10
    partner: str = EASE  # the collaborative model: a chatrec.baselines name
    selection: dict | None = None  # which partners were tried, their validation scores, and why this one

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

    @property
    def has_new_item_term(self) -> bool:
        return self.cold_weight > 0 or self.cold_offset != 0

    def manifest(self) -> dict:
        return {"weight": self.weight, "partner": self.partner, "partner_params": jsonable_params(self.partner_params),
                "partner_selection": self.selection, "validation": self.validation,
                "tower_scale": self.tower_scale, "collaborative_scale": self.collaborative_scale,
                "new_items": {"text_weight": self.cold_weight, "offset": self.cold_offset,
                              "content_scale": self.content_scale, "validation": list(self.cold_validation)}}

    @classmethod
    def from_manifest(cls, record: dict) -> "Fusion":
        """The fusion a run recorded (to resume it, or to reuse it in a refresh)."""
        new = record.get("new_items") or {}  # absent from runs before the new-item term: none
        # Runs before the low-rank partner recorded EASE's parameters under "ease".
        params = record.get("partner_params", record.get("ease"))
        return cls(float(record["weight"]), float(record["tower_scale"]), float(record["collaborative_scale"]),
                   {k: float("inf") if v == "inf" else v for k, v in params.items()},
                   list(record.get("validation", [])), float(new.get("text_weight", 0.0)),
                   float(new.get("content_scale", 1.0)), float(new.get("offset", 0.0)),
                   tuple(new.get("validation", ())), record.get("partner", EASE), record.get("partner_selection"))


def content_scores(text: np.ndarray, recent_rows: pa.ListArray) -> np.ndarray:
    """The zero-shot text score: text (n_items, d) unit text vectors, n users' newest-first
    rows -> (n, n_items) cosine of each user's recency-weighted mean text vector."""
    return content_profiles(text, recent_rows) @ text.T  # (n, n_items)


def content_profiles(text: np.ndarray, recent_rows: pa.ListArray) -> np.ndarray:
    """n users' newest-first rows -> (n, d) their recency-weighted mean text vectors."""
    from chatrec.user_vectors import recency_weighted_mean

    return recency_weighted_mean(text, recent_rows, CONTENT_HALF_LIFE)  # (n, d)


@dataclass(frozen=True)
class FusedVectors:
    """The fused score as one inner product, for a partner whose scores are p_u . q_j (the
    low-rank one): item rows [tower_i, q_i, (text_i - mean text) * new_i, new_i] against
    queries [w s_t tower_u, (1 - w) s_c p_u, c s_x profile_u, b], so that

        query_u . item_i = tower term + collaborative term + new-item text term + offset

    exactly the dense fused score. The new-item columns exist only when that term does.
    """

    items: np.ndarray  # (n_items, D) float32
    tower_dim: int
    rank: int
    text_dim: int  # 0: no new-item term

    @classmethod
    def build(cls, fusion: Fusion, tower_items: np.ndarray, factors: np.ndarray, text: np.ndarray | None,
              id_less: np.ndarray | None) -> "FusedVectors":
        """tower_items (n_items, d_t), factors (n_items, r), text (n_items, d_x) and id_less
        (n_items,) bool (both None: no new-item term)."""
        parts = [tower_items, factors]
        text_dim = 0
        if text is not None and id_less is not None and id_less.any() and fusion.has_new_item_term:
            new = id_less.astype(np.float32)[:, None]  # (n_items, 1)
            parts += [(text - text.mean(axis=0, keepdims=True)) * new, new]
            text_dim = text.shape[1]
        items = np.ascontiguousarray(np.hstack(parts), dtype=np.float32)  # (n_items, D)
        return cls(items, tower_items.shape[1], factors.shape[1], text_dim)

    def queries(self, fusion: Fusion, tower: np.ndarray, user_factors: np.ndarray,
                profiles: np.ndarray | None) -> np.ndarray:
        """tower (n, d_t), user_factors (n, r), profiles (n, d_x) or None -> (n, D) float32."""
        t, c = fusion.terms(tower, user_factors)  # (n, d_t), (n, r): the weights are linear
        parts = [t, c]
        if self.text_dim:
            parts += [fusion.cold_weight * fusion.content_scale * profiles,
                      np.full((len(tower), 1), fusion.cold_offset, np.float32)]
        return np.ascontiguousarray(np.hstack(parts), dtype=np.float32)  # (n, D)

    def picked_terms(self, queries: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, D) queries, (n, k) rows (>= 0) -> the tower, collaborative and new-item text
        terms of each picked item, (n, k) each (the offset is in none of them)."""
        spans = [(0, self.tower_dim), (self.tower_dim, self.tower_dim + self.rank)]
        end = self.tower_dim + self.rank
        spans.append((end, end + self.text_dim))
        items = self.items[rows]  # (n, k, D)
        return tuple(np.einsum("nd,nkd->nk", queries[:, a:b], items[:, :, a:b]) for a, b in spans)


def _scale(scores: np.ndarray) -> float:
    return float(1.0 / max(np.std(scores), 1e-12))


def tuning_users(n_items: int) -> int:
    """How many validation users the fusion's tuning scores, for a catalogue of `n_items`."""
    return int(min(TUNING_USERS, max(MIN_TUNING_USERS, TUNING_CELLS // max(n_items, 1))))


def sample_validation_users(valid_log: pl.DataFrame, n_users: int, seed: int = TUNING_SEED) -> pl.DataFrame:
    """The validation log of at most `n_users` of its users, a seeded sample (all of them if fewer)."""
    users = valid_log["user_id"].unique().sort()
    if len(users) <= n_users:
        return valid_log
    chosen = users.sample(n_users, seed=seed)
    return valid_log.filter(pl.col("user_id").is_in(chosen.implode()))


def partners_for(n_items: int) -> tuple[list[str], str]:
    """The collaborative partners a catalogue of `n_items` can have, and why."""
    if n_items > MAX_EASE_ITEMS:
        return [LOW_RANK], f"{n_items:,} items is above EASE's limit of {MAX_EASE_ITEMS:,}: the low-rank partner"
    return [EASE, LOW_RANK], "both fit: the one whose fusion scores higher on validation (a tie keeps EASE)"


def tune_fusion(
    *, train_log: pl.DataFrame, valid_log: pl.DataFrame, item_ids: list[str], tower_scores_of,
    new_items: dict | None = None, partners: list[str] | None = None,
) -> Fusion:
    """Tune each collaborative partner, then w for each; keep the best; then the new-item term.

    `tower_scores_of(user_ids) -> (n, n_items)` gives the trained two-tower scores of the
    validation users from their training histories (item columns in `item_ids` order).
    `new_items` (optional; without it no new-item term) holds "text" (n_items, d) unit text
    vectors, "has_id" (n_items,) bool, "text_only_scores_of" (user_ids -> (n, n_items) tower
    scores with every item placed by its text alone), "share" (of the known items that
    pretend to be new) and "seed". `partners` (default: `partners_for` the catalogue) are
    the collaborative models to choose from.
    """
    candidates, why = partners_for(len(item_ids))
    if partners is not None:
        candidates, why = list(partners), f"given: {', '.join(partners)}"
    matrix = build_interaction_matrix(train_log, item_universe=item_ids)
    n_valid = valid_log["user_id"].n_unique()
    valid_log = sample_validation_users(valid_log, tuning_users(len(item_ids)))
    targets = validation_targets(matrix, valid_log)
    users = targets.users  # (n,) user codes in `matrix`
    tunings = {name: tune(get_baseline(name), matrix, valid_log, top_k=VALIDATION_K) for name in candidates}
    if len(users) == 0:
        logger.warning("fusion: no validation user to tune on; two-tower weight %.1f, %s defaults",
                       UNTUNED_WEIGHT, candidates[0])
        return Fusion(UNTUNED_WEIGHT, 1.0, 1.0, dict(tunings[candidates[0]].best_params), [], partner=candidates[0],
                      selection={"candidates": candidates, "chosen": candidates[0],
                                 "why": "no validation user: the first candidate's defaults, two-tower score alone"})
    blocks = Blocks(matrix, users, targets.positives, tower_scores_of)
    best, tried = None, []
    for name in candidates:
        params = dict(tunings[name].best_params)
        model = get_baseline(name).fit(matrix, params)
        fusion = _tune_weight(name, params, model, blocks)
        score = max(r["ndcg@10"] for r in fusion.validation)
        tried.append({"partner": name, "params": jsonable_params(params), "weight": fusion.weight, "ndcg@10": score,
                      "alone_ndcg@10": max((s["ndcg@10"] for s in tunings[name].scores), default=None)})
        if best is None or score > best[1]:
            best = (fusion, score, model)
    fusion, score, model = best
    selection = {"candidates": tried, "chosen": fusion.partner, "why": why,
                 "validation_users": int(len(users)), "validation_users_in_hold_out": int(n_valid)}
    fusion = replace(fusion, selection=selection)
    logger.info("fusion: %s, w = %.1f (validation NDCG@10 %.4f; %s)", fusion.partner, fusion.weight, score,
                jsonable_params(fusion.partner_params))
    if new_items is None or new_items["share"] <= 0:
        return fusion
    return _tune_new_items(fusion, model, blocks, new_items)


class Blocks:
    """The tuning users a block at a time, so that each dense (users, items) score matrix
    holds at most TUNING_BLOCK users whatever the catalogue. Scales are measured on the first
    block (every user, when they fit in one)."""

    def __init__(self, matrix, users: np.ndarray, positives: list, tower_scores_of) -> None:
        self.matrix, self.users, self.positives = matrix, users, positives
        self.tower_scores_of = tower_scores_of
        self.slices = [slice(s, s + TUNING_BLOCK) for s in range(0, len(users), TUNING_BLOCK)]
        self._first_tower = None

    def user_ids(self, block: slice) -> list[str]:
        return [self.matrix.user_ids[u] for u in self.users[block]]

    def tower(self, block: slice) -> np.ndarray:
        """(b, n_items) two-tower scores, read-only; the first block's are kept (every
        partner reads them)."""
        if block == self.slices[0]:
            if self._first_tower is None:
                self._first_tower = self.tower_scores_of(self.user_ids(block))
            return self._first_tower
        return self.tower_scores_of(self.user_ids(block))

    def seen(self, block: slice):
        return self.matrix.X[self.users[block]]  # (b, n_items) each user's training items

    def ndcg(self, fused: np.ndarray, seen, block: slice) -> float:
        """Summed (not mean) NDCG@10 of a block's fused scores; `fused` is overwritten."""
        top = top_k_excluding(fused, seen, VALIDATION_K).codes  # (b, k)
        positives = self.positives[block]
        return ndcg_of_topk(top, positives, VALIDATION_K) * len(positives)

    @property
    def n(self) -> int:
        return len(self.users)


def _tune_weight(partner: str, params: dict, model, blocks: Blocks) -> Fusion:
    """w on the validation users, the partner's scores from `model`."""
    first = blocks.slices[0]
    first_collaborative = model.scores(blocks.users[first])  # (b, n_items)
    scales = (_scale(blocks.tower(first)), _scale(first_collaborative))
    sums = np.zeros(len(WEIGHTS))
    for block in blocks.slices:
        collaborative = first_collaborative if block == first else model.scores(blocks.users[block])
        tower = blocks.tower(block)  # (b, n_items)
        seen = blocks.seen(block)
        for j, w in enumerate(WEIGHTS):
            fused = sum(Fusion(w, *scales, params, [], partner=partner).terms(tower, collaborative))  # (b, n_items)
            sums[j] += blocks.ndcg(fused, seen, block)
    results = [{"weight": w, "ndcg@10": float(total / blocks.n)} for w, total in zip(WEIGHTS, sums)]
    best = max(results, key=lambda r: r["ndcg@10"])  # the first of ties
    logger.info("fusion with %s: w = %.1f (validation NDCG@10 %.4f)", partner, best["weight"], best["ndcg@10"])
    return Fusion(best["weight"], *scales, params, results, partner=partner)


def _tune_new_items(fusion: Fusion, model, blocks: Blocks, new_items: dict) -> Fusion:
    """c and b of the new-item term, w fixed, with a seeded share of the known items made
    new: their tower scores from text alone, their collaborative scores 0. Items with no
    interaction at all are left out of this ranking: the hold-out cannot say whether they
    belong in it. Only the pretended-new items' scores change from one (c, b) to the next,
    so the other items' top 10 is found once per block and each point ranks the pretended
    ones alone, then merges (`merged_top_k`): the same lists as ranking every item."""
    has_id = np.asarray(new_items["has_id"], bool)  # (n_items,)
    known = np.flatnonzero(has_id)
    rng = np.random.default_rng(new_items["seed"])
    pretend = np.zeros(len(has_id), bool)  # (n_items,)
    pretend[rng.choice(known, size=int(round(new_items["share"] * len(known))), replace=False)] = True
    columns = np.flatnonzero(pretend)  # (p,)
    never = np.flatnonzero(~has_id)  # (m,) never interacted with: out of the ranking
    grid = [(c, b) for c in COLD_WEIGHTS for b in COLD_OFFSETS]
    sums = np.zeros(len(grid))
    content_scale = None
    for block in blocks.slices:
        users = blocks.users[block]
        tower = np.where(pretend[None, :], new_items["text_only_scores_of"](blocks.user_ids(block)),
                         blocks.tower(block))  # (b, n_items)
        collaborative = np.where(pretend[None, :], 0.0, model.scores(users))  # (b, n_items)
        # Each validation user's newest-first training items, as the top-K stage reads them.
        recent = pa.array([blocks.matrix.history(u)[:CONTENT_HISTORY].tolist() for u in users], pa.list_(pa.int64()))
        content = content_scores(new_items["text"], recent)  # (b, n_items)
        centred = content - content.mean(axis=1, keepdims=True)  # (b, n_items), as new_item_terms centres it
        if content_scale is None:
            content_scale = _scale(centred)
        base = sum(fusion.terms(tower, collaborative))  # (b, n_items)
        seen = blocks.seen(block)
        others = base.copy()  # (b, n_items): every item but the pretended-new and the never-seen
        others[:, never] = -np.inf
        others[:, columns] = -np.inf
        fixed = top_k_excluding(others, seen, VALIDATION_K).codes  # (b, k)
        fixed_scores = np.where(fixed >= 0, np.take_along_axis(others, np.maximum(fixed, 0), axis=1), -np.inf)
        base_new, centred_new, seen_new = base[:, columns], centred[:, columns], seen[:, columns]  # (b, p) each
        positives = blocks.positives[block]
        for j, (c, b) in enumerate(grid):
            scores_new = base_new + c * content_scale * centred_new + b  # (b, p)
            top = merged_top_k(fixed, fixed_scores, scores_new, columns, seen_new, VALIDATION_K)  # (b, k)
            sums[j] += ndcg_of_topk(top, positives, VALIDATION_K) * len(positives)
    results = [{"text_weight": c, "offset": b, "ndcg@10": float(total / blocks.n)}
               for (c, b), total in zip(grid, sums)]
    best = max(results, key=lambda r: r["ndcg@10"])  # the first of ties
    logger.info("fusion: new items c = %.2f, b = %.2f (validation NDCG@10 %.4f, %d known items as new)",
                best["text_weight"], best["offset"], best["ndcg@10"], int(pretend.sum()))
    return replace(fusion, cold_weight=best["text_weight"], content_scale=content_scale, cold_offset=best["offset"],
                   cold_validation=tuple(results))


def merged_top_k(fixed: np.ndarray, fixed_scores: np.ndarray, scores: np.ndarray, columns: np.ndarray, seen,
                 k: int) -> np.ndarray:
    """The top k over all items, from the top k of the items outside `columns` (codes `fixed`
    (n, k), -1 padded, with their scores) and `scores` (n, p) of the items at `columns` (p,)
    sorted, `seen` (n, p) excluded: (n, k) codes, best first, ties by code, as
    top_k_excluding would rank every item at once."""
    picked = top_k_excluding(scores, seen, k).codes  # (n, k) positions in `columns`; `scores` overwritten
    picked_scores = np.where(picked >= 0, np.take_along_axis(scores, np.maximum(picked, 0), axis=1), -np.inf)
    codes = np.hstack([fixed, np.where(picked >= 0, columns[np.maximum(picked, 0)], -1)])  # (n, 2k)
    values = np.hstack([fixed_scores, picked_scores])  # (n, 2k) float64: no rounding between the halves
    order = np.lexsort((np.where(codes >= 0, codes, np.iinfo(np.int64).max), -values), axis=1)[:, :k]
    top = np.take_along_axis(codes, order, axis=1)  # (n, k)
    return np.where(np.isneginf(np.take_along_axis(values, order, axis=1)), -1, top)


def collaborative_model(log: pl.DataFrame, item_ids: list[str], fusion: Fusion):
    """The fusion's partner refit on every interaction with its tuned parameters, for scoring."""
    matrix = build_interaction_matrix(log, item_universe=item_ids)
    return get_baseline(fusion.partner).fit(matrix, fusion.partner_params)
