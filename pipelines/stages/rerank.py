"""rerank: with rerank.enabled, a language model orders each user's N candidates into the
top K (pipelines/rerank.py). Writes recommendations/ and rerank_status/; resumable."""

from __future__ import annotations

from chatrec.rerank.stats import describe
from chatrec.stage_metrics import StageMetric
from pipelines.rerank import rerank_stage
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.histories import HISTORIES
from pipelines.stages.top_k import CANDIDATES


def _rerank(ctx: RunContext, m: StageMetric) -> None:
    cfg, output, users = ctx.cfg, ctx.output, ctx.inputs.users
    record = rerank_stage(
        candidates_path=output.path(CANDIDATES), out_path=output.path("recommendations"),
        status_path=output.path("rerank_status"), catalogue=ctx.catalogue, histories=output.path(HISTORIES),
        users=users.table if users is not None else None, item_text=ctx.texts,
        cfg=cfg.rerank, top_k=cfg.retrieval.top_k, run_id=ctx.run_id, buckets=ctx.buckets, progress=m.counter(),
    )
    _take(ctx, record, m)


def _take(ctx: RunContext, record: dict, m: StageMetric) -> None:
    ctx.rerank = record
    m.rows, m.detail = record["users"]["total"], describe(record)


# Resumable above all: the costliest stage of all is never paid twice.
STAGE = Stage("rerank", "users", run=_rerank, writes=("recommendations", "rerank_status"), resumable=True,
              record=lambda ctx: ctx.rerank, resume=_take, when=lambda ctx: ctx.cfg.rerank.enabled)
