"""top-k: each user's top K unseen items with reasons (Ray Data FAISS actors); the popularity
fallback for users without a usable history. With the rerank stage: the top N candidates,
to a work table. Resumable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from chatrec.histories import item_popularity, rank_popularity
from chatrec.new_item_demand import LogTimes, decide_slots
from chatrec.new_item_slots import SLOT_STRATEGY
from chatrec.publish import WORK_DIR
from chatrec.stage_metrics import StageMetric
from pipelines.histories import users_per_item
from pipelines.recommend import popularity_fallback, recommend
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.embed_users import USER_VECTORS
from pipelines.stages.histories import HISTORIES

CANDIDATES = f"{WORK_DIR}/candidates"  # with the rerank stage, which writes recommendations/ from them


def _table(ctx: RunContext) -> str:
    return CANDIDATES if ctx.cfg.rerank.enabled else "recommendations"


def _recommend(ctx: RunContext, m: StageMetric) -> None:
    cfg, output, inputs, matcher = ctx.cfg, ctx.output, ctx.inputs, ctx.matcher
    table = _table(ctx)
    retrieval = cfg.retrieval.model_copy(update={"top_k": cfg.rerank.candidates}) if cfg.rerank.enabled else cfg.retrieval
    popularity = item_popularity(inputs.interactions.table, ctx.texts) if inputs.interactions is not None else None
    times = _log_times(ctx)
    new_rows = np.flatnonzero(~times.items_seen).astype(np.int64)
    demand = times.demand() if cfg.retrieval.new_item_slots == "auto" and len(new_rows) else None
    slots, why = decide_slots(cfg.retrieval.new_item_slots, demand, cfg.retrieval.top_k, len(new_rows))
    if ctx.users_with_history:
        recommend(
            user_vectors_path=output.path(USER_VECTORS), index_ref=ctx.index_ref,
            catalogue_ref=ctx.catalogue_ref, retrieval=retrieval, plan=ctx.topk_plan, run_id=ctx.run_id,
            out_path=output.path(table), strategy="two-tower" if matcher else "content",
            fusion=ray.put(matcher.fusion) if matcher is not None and matcher.fusion else None,
            new_rows=ray.put(new_rows) if slots else None, new_item_slots=slots,
            users_per_block=cfg.history.users_per_block, buckets=ctx.buckets,
            progress=m.counter(total=ctx.users_with_history, workers=ctx.topk_plan.num_actors),
        )
    if ctx.users_without_history:
        popularity_fallback(histories_path=output.path(HISTORIES),
                            popularity=popularity if popularity is not None else _popularity_on_cluster(ctx),
                            top_k=retrieval.top_k, run_id=ctx.run_id, out_path=output.path(table),
                            buckets=ctx.buckets)
    _take(ctx, {"users": ctx.users_with_history + ctx.users_without_history, "new_items": len(new_rows),
                "new_item_slots": slots, "new_item_slots_why": why,
                "new_item_demand": demand.to_dict() if demand is not None else None,
                # Counted by a scan of the written table's strategy column (a few seconds at
                # 20M rows): only when slots were kept.
                "rows_in_new_item_slots": (output.count_rows(table, pads.field("strategy") == SLOT_STRATEGY) or 0)
                                          if slots else 0}, m)


def _log_times(ctx: RunContext) -> LogTimes:
    """The valid log's per-item and per-day sums: counted here for a log in the driver, by
    validate-log's tasks for one validated on the cluster."""
    if ctx.inputs.interactions is None:
        return ctx.log_checked.times
    log = ctx.inputs.interactions.table
    rows = pc.index_in(log.column("item_id"), value_set=pa.array(ctx.catalogue.item_ids, pa.string()))
    return LogTimes.of(log.column("timestamp").to_numpy(), rows.to_numpy(zero_copy_only=False), ctx.catalogue.size)


def _popularity_on_cluster(ctx: RunContext):
    """Distinct users per item from the histories' seen items, which are the distinct items of
    the valid log: a log validated on the cluster has no exclusions (feedback is merged in the
    driver). Only the popularity fallback needs it."""
    counts = users_per_item(ctx.output.path(HISTORIES), ctx.catalogue.size)
    return rank_popularity(counts, ctx.texts, ctx.users_with_history)


def _take(ctx: RunContext, record: dict, m: StageMetric) -> None:
    ctx.topk_record = record
    m.rows = record["users"]


# It writes one of the two; the other is never there when it runs (a new attempt redoes
# rerank after it), so resetting both resets what it writes.
STAGE = Stage("top-k", "users", run=_recommend, writes=(CANDIDATES, "recommendations"), resumable=True,
              record=lambda ctx: ctx.topk_record, resume=_take)
