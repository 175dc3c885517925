"""embed-users: each user's vector (Ray Data user-tower actors): the matcher's user tower,
or a recency-weighted mean of the history's text vectors. A refresh reuses the previous
run's vectors of users whose history key did not change (a join on the cluster; in the
driver below `ray.in_driver_below` users). Writes user_embeddings/; resumable."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import ray

from chatrec import schemas
from chatrec.matcher.user_tower import MatcherUserEncoder
from chatrec.publish import WORK_DIR
from chatrec.runtime import user_plan
from chatrec.stage_metrics import StageMetric
from chatrec.user_vectors import RecencyMeanUserEncoder
from pipelines.embed_users import REUSED, embed_users, split_reusable, with_history
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.histories import HISTORIES

USER_VECTORS = f"{WORK_DIR}/user_vectors"  # what top-K reads: reused and recomputed vectors


def _embed(ctx: RunContext, m: StageMetric) -> None:
    output, previous, dim = ctx.output, ctx.previous, ctx.catalogue.dim
    histories: pa.Table | str = output.path(HISTORIES)
    columns = ["user_id", "history_key", "embedding"]
    before = previous.table_location("user_embeddings", columns) if previous is not None else None
    reused = None
    if before is not None and ctx.users_with_history < ctx.in_driver_below:
        # A small refresh: compared in the driver, and what changed embedded there too.
        reusable, histories = split_reusable(
            with_history(output.dataset(HISTORIES).to_table(columns=schemas.HISTORIES.names)),
            previous.table("user_embeddings", columns), dim,
        )
        reused, before = reusable.num_rows, None
        if reused:
            output.write_table(USER_VECTORS, reusable, file_name="reused.parquet")
    if ctx.users_with_history:
        tower = _user_tower(ctx)
        embed_users(
            histories, **tower, dim=dim, users_per_block=ctx.cfg.history.users_per_block,
            in_driver_below=ctx.in_driver_below, work_path=output.path(USER_VECTORS),
            out_path=output.path("user_embeddings"), previous=before, partitions=ctx.buckets,
            progress=m.counter(total=ctx.users_with_history, workers=tower["plan"].num_actors),
        )
    if reused is None:  # the join on the cluster marked them
        reused = (output.count_rows(USER_VECTORS, pads.field(REUSED)) or 0) if before is not None else 0
    m.detail = f"{reused} reused from the previous run" if previous else ""
    _take(ctx, {"recomputed": ctx.users_with_history - reused, "reused": reused}, m)


def _take(ctx: RunContext, record: dict, m: StageMetric) -> None:
    ctx.users_record = record
    m.rows = record["recomputed"]


def _user_tower(ctx: RunContext) -> dict:
    """embed_users' tower, its kwargs and actor plan."""
    cfg, matcher, resources = ctx.cfg, ctx.matcher, ctx.resources
    if matcher is not None:
        return dict(tower=MatcherUserEncoder, plan=user_plan(resources), tower_kwargs=dict(
            catalogue=ctx.catalogue_ref, matcher=ray.put(matcher.user_tower), threads=user_plan(resources).threads))
    profiles = cfg.history.profile_weight > 0 and ctx.inputs.users is not None
    # Profiles need the text encoder in the user actors (and its GPU, if it has one).
    text_encoder = dict(
        model=cfg.encoder.model, fingerprint=ctx.fingerprint, max_length=cfg.encoder.max_length,
        batch_size=cfg.encoder.batch_size, device=ctx.enc_plan.device, precision=ctx.precision,
        num_threads=ctx.enc_plan.threads,
    ) if profiles else None
    return dict(tower=RecencyMeanUserEncoder, plan=ctx.enc_plan if profiles else user_plan(resources),
                tower_kwargs=dict(catalogue=ctx.catalogue_ref, half_life=cfg.history.half_life,
                                  profile_weight=cfg.history.profile_weight if profiles else 0.0,
                                  text_encoder=text_encoder))


STAGE = Stage("embed-users", "users", run=_embed, writes=(USER_VECTORS, "user_embeddings"), resumable=True,
              record=lambda ctx: ctx.users_record, resume=_take)
