"""read+validate: every input read and checked against the contract; bad rows kept as rejects."""

from __future__ import annotations

from chatrec.errors import InputDataError
from chatrec.stage_metrics import StageMetric
from pipelines.ingest import read_inputs
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext

# A log of this many rows or more is validated on the cluster (validate-log), not here: the
# driver never holds it. Below, one pass in the driver is quicker than starting Ray's tasks.
LOG_IN_DRIVER_BELOW = 1 << 18


def _read(ctx: RunContext, m: StageMetric) -> None:
    cfg = ctx.cfg
    inputs = read_inputs(cfg.inputs, cfg.item_text, cfg.feedback, log_in_driver_below=LOG_IN_DRIVER_BELOW)
    log = inputs.interactions.rows_read if inputs.interactions is not None else 0
    m.rows = inputs.items.rows_read + log + (inputs.users.rows_read if inputs.users else 0)
    ctx.inputs, ctx.rejects = inputs, inputs.rejects()
    m.detail = f"{ctx.rejects.num_rows} rejected"
    if inputs.log_plan is not None:
        m.detail += f"; the log (about {inputs.log_plan.rows:,} rows) is validated on the cluster"


def _some_items(ctx: RunContext) -> None:
    if ctx.inputs.items.table.num_rows == 0:
        raise InputDataError("no valid items: every row was rejected (see the rejects)",
                             source=ctx.cfg.inputs.items.display)


STAGE = Stage("read+validate", "rows", run=_read, after=_some_items)
