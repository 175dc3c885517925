"""validate-log: a log too big for the driver, read and validated by Ray tasks chunk by chunk
(pipelines/validate_log.py): valid rows, rejects and the users of rejected rows as work
tables; the driver keeps counts. Runs only when read+validate left the log to the cluster."""

from __future__ import annotations

from chatrec.errors import PublishError
from chatrec.publish import WORK_DIR
from chatrec.stage_metrics import StageMetric
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.validate_log import validate_log_on_cluster

VALID_LOG = f"{WORK_DIR}/interactions"  # the validated log: (user_id, item_id, timestamp)
LOG_REJECTS = f"{WORK_DIR}/log_rejects"  # schemas.REJECTS, published with the others
LOG_USERS = f"{WORK_DIR}/log_rejected_users"  # users of rejected rows: covered even without a valid row


def _validate(ctx: RunContext, m: StageMetric) -> None:
    output, plan = ctx.output, ctx.inputs.log_plan
    ctx.log_checked = result = validate_log_on_cluster(
        plan, table=ctx.cfg.inputs.interactions, item_ids=ctx.inputs.items.table.column("item_id").combine_chunks(),
        valid_path=output.path(VALID_LOG), rejects_path=output.path(LOG_REJECTS), users_path=output.path(LOG_USERS),
        progress=m.counter(total=plan.rows),
    )
    m.rows = result.rows_read
    m.detail = f"{result.rejected} rejected, {len(plan.chunks)} chunks"


def _same_log(ctx: RunContext) -> None:
    """As item-text's check of the other inputs: a resumed attempt must see the same log."""
    first = ctx.output.stage_record("inputs-log")
    if first is None:
        ctx.output.mark_complete("inputs-log", {"sha256": ctx.log_checked.sha256})
    elif first["sha256"] != ctx.log_checked.sha256:
        raise PublishError(
            f"run {ctx.run_id!r} has an interrupted attempt at {ctx.output.staging_dir} made from another "
            "interaction log: it cannot be resumed with these inputs. Use a new run id, or delete that "
            "directory to start this run id over"
        )


STAGE = Stage("validate-log", "rows", run=_validate, writes=(VALID_LOG, LOG_REJECTS, LOG_USERS),
              when=lambda ctx: ctx.inputs.log_plan is not None, after=_same_log)
