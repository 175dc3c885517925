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

VALID_LOG = f"{WORK_DIR}/interactions"  # the validated log, handed to the cluster
HISTORIES = f"{WORK_DIR}/histories"  # pipelines.histories.BUCKETED_HISTORIES
LOG_ROWS_PER_FILE = 1 << 20  # files of the handed-over log: read in parallel on a cluster
# Smaller logs are bucketed in the driver, at the same output: starting the shuffle and its
# workers takes seconds (7.8 s against 0.5 s on MovieLens-100K's 93k interactions), and
# this many rows take the driver tens of megabytes.
IN_DRIVER_BELOW = 1 << 18


def _build(ctx: RunContext, m: StageMetric) -> None:
    cfg, inputs, matcher, output = ctx.cfg, ctx.inputs, ctx.matcher, ctx.output
    log = inputs.interactions.table.select(["user_id", "item_id", "timestamp"])
    small = log.num_rows < IN_DRIVER_BELOW
    for part, start in enumerate(range(0, log.num_rows if not small else 0, LOG_ROWS_PER_FILE)):
        output.write_table(VALID_LOG, log.slice(start, LOG_ROWS_PER_FILE), file_name=f"part-{part:05d}.parquet")
    profiles = cfg.history.profile_weight > 0 and inputs.users is not None
    tower_key = json.dumps(
        {"matcher": matcher.manifest.get("trained_in_run"), "params": matcher.manifest["params"]} if matcher
        else {"content": ctx.cache_key, "half_life": cfg.history.half_life,
              "profile_weight": cfg.history.profile_weight if profiles else 0.0},
        sort_keys=True,
    )
    ctx.buckets = bucket_count(log.num_rows)
    build_histories_on_cluster(
        log_path=output.path(VALID_LOG), users=inputs.users.table if inputs.users is not None else None,
        excluded=inputs.exclusions, cover=_users_without_valid_rows(inputs.log_user_ids, log),
        item_rows=ctx.texts.select(["item_id", "row"]), item_keys=item_keys(ctx.texts), tower_key=tower_key,
        max_items=cfg.history.max_items, buckets=ctx.buckets,
        out_path=output.path(HISTORIES), in_driver=log if small else None,
        progress=m.counter(),
    )
    ctx.users_with_history = output.count_rows(HISTORIES, pads.field("history_len") > 0) or 0
    ctx.users_without_history = output.count_rows(HISTORIES, pads.field("history_len") == 0) or 0
    m.rows = ctx.users_with_history + ctx.users_without_history
    m.detail = f"{ctx.users_without_history} without usable history, {ctx.buckets} buckets"


def _users_without_valid_rows(log_user_ids: pa.Array, log: pa.Table) -> pa.Array:
    """Users of the raw log whose every row was rejected: they still get recommendations."""
    return log_user_ids.filter(pc.invert(pc.is_in(log_user_ids, value_set=pc.unique(log.column("user_id")))))


STAGE = Stage("histories", "users", run=_build, writes=(VALID_LOG, HISTORIES))
