"""histories: each user's recent and seen items, each with the key of what its user vector
is computed from (a refresh reuses the vectors whose key did not change). Built on the
cluster by user bucket (pipelines/histories.py) into a work table the later stages stream;
the driver keeps only the counts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from chatrec.histories import item_keys
from chatrec.publish import WORK_DIR
from chatrec.stage_metrics import StageMetric
from chatrec.user_buckets import bucket_count
from pipelines.histories import build_histories_on_cluster
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.validate_log import LOG_USERS, VALID_LOG

HISTORIES = f"{WORK_DIR}/histories"  # pipelines.histories.BUCKETED_HISTORIES
LOG_ROWS_PER_FILE = 1 << 20  # files of the handed-over log: read in parallel on a cluster
# Smaller logs are bucketed in the driver, at the same output: starting the shuffle and its
# workers takes seconds (7.8 s against 0.5 s on MovieLens-100K's 93k interactions), and
# this many rows take the driver tens of megabytes.
IN_DRIVER_BELOW = 1 << 18


def _build(ctx: RunContext, m: StageMetric) -> None:
    cfg, inputs, matcher, output = ctx.cfg, ctx.inputs, ctx.matcher, ctx.output
    log = cover = cover_path = None
    if inputs.interactions is None:  # validated on the cluster: its valid rows are in VALID_LOG already
        rows = ctx.log_checked.valid
        cover_path = output.path(LOG_USERS) if output.count_rows(LOG_USERS) else None
    else:
        log = inputs.interactions.table.select(["user_id", "item_id", "timestamp"])
        rows = log.num_rows
        cover = _users_without_valid_rows(inputs.log_user_ids, log)
        if rows >= IN_DRIVER_BELOW:  # handed to the cluster
            output.reset(VALID_LOG)
            for part, start in enumerate(range(0, rows, LOG_ROWS_PER_FILE)):
                output.write_table(VALID_LOG, log.slice(start, LOG_ROWS_PER_FILE), file_name=f"part-{part:05d}.parquet")
    profiles = cfg.history.profile_weight > 0 and inputs.users is not None
    tower_key = json.dumps(
        {"matcher": matcher.manifest.get("trained_in_run"), "params": matcher.manifest["params"]} if matcher
        else {"content": ctx.cache_key, "half_life": cfg.history.half_life,
              "profile_weight": cfg.history.profile_weight if profiles else 0.0},
        sort_keys=True,
    )
    ctx.buckets = bucket_count(rows)
    build_histories_on_cluster(
        log_path=output.path(VALID_LOG), users=inputs.users.table if inputs.users is not None else None,
        excluded=inputs.exclusions, cover=cover, cover_path=cover_path,
        item_rows=ctx.texts.select(["item_id", "row"]), item_keys=item_keys(ctx.texts), tower_key=tower_key,
        max_items=cfg.history.max_items, buckets=ctx.buckets, out_path=output.path(HISTORIES),
        in_driver=log if log is not None and rows < IN_DRIVER_BELOW else None, progress=m.counter(),
    )
    ctx.users_with_history = output.count_rows(HISTORIES, pads.field("history_len") > 0) or 0
    ctx.users_without_history = output.count_rows(HISTORIES, pads.field("history_len") == 0) or 0
    m.rows = ctx.users_with_history + ctx.users_without_history
    m.detail = f"{ctx.users_without_history} without usable history, {ctx.buckets} buckets"


def _users_without_valid_rows(log_user_ids: pa.Array, log: pa.Table) -> pa.Array:
    """Users of the raw log whose every row was rejected: they still get recommendations."""
    return log_user_ids.filter(pc.invert(pc.is_in(log_user_ids, value_set=pc.unique(log.column("user_id")))))


STAGE = Stage("histories", "users", run=_build, writes=(HISTORIES,))
