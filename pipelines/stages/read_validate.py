"""read+validate: every input read and checked against the contract; bad rows kept as rejects."""

from __future__ import annotations

from chatrec.errors import InputDataError
from chatrec.stage_metrics import StageMetric
from pipelines.ingest import read_inputs
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext


def _read(ctx: RunContext, m: StageMetric) -> None:
    cfg = ctx.cfg
    inputs = read_inputs(cfg.inputs, cfg.item_text, cfg.feedback)
    m.rows = inputs.items.rows_read + inputs.interactions.rows_read + (inputs.users.rows_read if inputs.users else 0)
    ctx.inputs, ctx.rejects = inputs, inputs.rejects()
    m.detail = f"{ctx.rejects.num_rows} rejected"


def _some_items(ctx: RunContext) -> None:
    if ctx.inputs.items.table.num_rows == 0:
        raise InputDataError("no valid items: every row was rejected (see the rejects)",
                             source=ctx.cfg.inputs.items.display)


STAGE = Stage("read+validate", "rows", run=_read, after=_some_items)
