"""histories: each user's recent and seen items, each with the key of what its user vector
is computed from (a refresh reuses the vectors whose key did not change)."""

from __future__ import annotations

import json

import pyarrow as pa

from chatrec.histories import build_histories, history_keys, item_keys
from chatrec.stage_metrics import StageMetric
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext


def _build(ctx: RunContext, m: StageMetric) -> None:
    cfg, inputs, matcher = ctx.cfg, ctx.inputs, ctx.matcher
    extra_users = inputs.log_user_ids
    if inputs.users is not None:
        extra_users = pa.concat_arrays([extra_users, inputs.users.table.column("user_id").combine_chunks()])
    population = build_histories(
        inputs.interactions.table, ctx.texts, max_items=cfg.history.max_items, extra_user_ids=extra_users,
        users=inputs.users.table if inputs.users is not None else None, excluded=inputs.exclusions,
    )
    profiles = cfg.history.profile_weight > 0 and inputs.users is not None
    tower_key = json.dumps(
        {"matcher": matcher.manifest.get("trained_in_run"), "params": matcher.manifest["params"]} if matcher
        else {"content": ctx.cache_key, "half_life": cfg.history.half_life,
              "profile_weight": cfg.history.profile_weight if profiles else 0.0},
        sort_keys=True,
    )
    ctx.histories = population.histories.set_column(
        population.histories.schema.get_field_index("history_key"), "history_key",
        pa.array(history_keys(population.histories, item_keys(ctx.texts), tower_key), pa.int64()),
    )
    ctx.fallback = population.fallback_user_ids.to_pylist()
    m.rows = ctx.histories.num_rows + len(ctx.fallback)
    m.detail = f"{len(ctx.fallback)} without usable history"


STAGE = Stage("histories", "users", run=_build)
