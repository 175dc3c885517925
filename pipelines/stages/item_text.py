"""item-text: each item rendered as text (chatrec.item_text); texts longer than the encoder takes are counted."""

from __future__ import annotations

import hashlib

import polars as pl

from chatrec.encoder import count_truncated
from chatrec.errors import PublishError
from chatrec.stage_metrics import StageMetric
from pipelines.ingest import item_texts
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext


def _render(ctx: RunContext, m: StageMetric) -> None:
    encoder = ctx.cfg.encoder
    ctx.texts = item_texts(ctx.inputs, ctx.cfg.item_text)
    ctx.truncated = count_truncated(encoder.model, ctx.texts.column("text").to_pylist(), encoder.max_length)
    m.rows = ctx.texts.num_rows
    m.detail = f"{ctx.truncated} truncated to {encoder.max_length} tokens"


def _same_inputs(ctx: RunContext) -> None:
    """A resumed attempt must see the inputs the first attempt saw: its marked stages were
    computed from them."""
    output, inputs = ctx.output, ctx.inputs
    digest = hashlib.sha256()
    users = inputs.users.table if inputs.users else None
    log = inputs.interactions.table if inputs.interactions is not None else None  # else: validate-log checks it
    for table in (ctx.texts.select(["item_id", "text_sha256"]), log, users):
        if table is not None:
            # Row hashes, not raw buffers: Arrow buffers may carry slack bytes of no meaning.
            digest.update(pl.from_arrow(table).hash_rows(seed=0).to_numpy().tobytes())
    key = digest.hexdigest()
    first = output.stage_record("inputs")
    if first is None:
        output.mark_complete("inputs", {"sha256": key})
    elif first["sha256"] != key:
        raise PublishError(
            f"run {output.run_id!r} has an interrupted attempt at {output.staging_dir} made from other input "
            "data: it cannot be resumed with these inputs. Use a new run id, or delete that directory to start "
            "this run id over"
        )


STAGE = Stage("item-text", "items", run=_render, after=_same_inputs)
