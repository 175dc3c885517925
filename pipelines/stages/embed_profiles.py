"""embed-profiles: with the matcher and a users table, each distinct profile text through
the item encoder (and its embedding cache), for the user tower's profile token."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from chatrec import schemas
from chatrec.embedding_cache import EmbeddingCache
from chatrec.histories import profile_texts
from chatrec.matcher.profiles import UserProfiles
from chatrec.publish import WORK_DIR
from chatrec.stage_metrics import StageMetric
from pipelines.embed_items import embed_items_cached
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.embed_items import read_embeddings

PROFILE_EMBEDDINGS = f"{WORK_DIR}/profile_embeddings"


def _wanted(ctx: RunContext) -> bool:
    return ctx.cfg.matcher.enabled and ctx.cfg.matcher.profile == "auto" and ctx.inputs.users is not None


def _embed(ctx: RunContext, m: StageMetric) -> None:
    """Also keeps the texts' hashes: the cache keeps their vectors when it is compacted."""
    cfg = ctx.cfg
    text_of_user = {u: t for u, t in profile_texts(ctx.inputs.users.table).iter_rows() if t}
    distinct = sorted(set(text_of_user.values()))
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in distinct]
    table = pa.table({"item_id": hashes, "row": pa.array(range(len(distinct)), pa.int32()), "text": distinct,
                      "text_sha256": hashes}).cast(schemas.ITEM_TEXT)
    record = {"users": len(text_of_user), "texts": len(distinct), "embedded": 0, "reused": 0}
    if distinct:
        cache = EmbeddingCache(cfg.output.path, ctx.cache_key, ctx.dim) if cfg.output.embedding_cache else None
        record.update(embed_items_cached(table, cache=cache, output=ctx.output, name=PROFILE_EMBEDDINGS,
                                         fingerprint=ctx.fingerprint, dim=ctx.dim, encoder=cfg.encoder,
                                         plan=ctx.enc_plan, precision=ctx.precision,
                                         in_driver_below=ctx.in_driver_below, progress=m.counter(workers=ctx.enc_plan.num_actors)))
        ids, vectors = read_embeddings(ctx.output, PROFILE_EMBEDDINGS, "item_id")
    else:
        ids, vectors = [], np.zeros((0, ctx.dim), np.float32)
    text_of_hash = dict(zip(hashes, distinct))
    ctx.profiles = UserProfiles({text_of_hash[h]: row for row, h in enumerate(ids)}, vectors, text_of_user)
    ctx.profiles_record, ctx.profile_hashes = record, hashes
    m.rows = record["embedded"]
    m.detail = f"{record['texts']} distinct texts, {record['reused']} from the cache"


# Not resumable: every attempt redoes it (one vector per distinct profile text).
STAGE = Stage("embed-profiles", "profiles", run=_embed, writes=(PROFILE_EMBEDDINGS,), when=_wanted)
