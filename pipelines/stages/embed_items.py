"""embed-items: the item texts through the encoder (Ray Data actors); the embedding cache
serves texts it has seen. Writes item_embeddings/; resumable."""

from __future__ import annotations

import numpy as np

from chatrec.embedding_cache import EmbeddingCache
from chatrec.encoder import fixed_size_list_to_numpy
from chatrec.publish import RunOutput
from chatrec.stage_metrics import StageMetric
from pipelines.embed_items import embed_items_cached
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext

TABLE = "item_embeddings"


def read_embeddings(output: RunOutput, name: str, key: str) -> tuple[list[str], np.ndarray]:
    """A staged embeddings table, sorted by `key`: (keys, (n, dim) vectors)."""
    table = output.dataset(name).to_table(columns=[key, "embedding"]).sort_by(key)
    return table.column(key).to_pylist(), fixed_size_list_to_numpy(table.column("embedding"))


def _embed(ctx: RunContext, m: StageMetric) -> None:
    cfg = ctx.cfg
    cache = EmbeddingCache(cfg.output.path, ctx.cache_key, ctx.dim) if cfg.output.embedding_cache else None
    embedding = embed_items_cached(
        ctx.texts, cache=cache, output=ctx.output, name=TABLE, fingerprint=ctx.fingerprint, dim=ctx.dim,
        encoder=cfg.encoder, plan=ctx.enc_plan, precision=ctx.precision, in_driver_below=ctx.in_driver_below,
        progress=m.counter(workers=ctx.enc_plan.num_actors),
    )
    embedding["cache_key"] = ctx.cache_key if cache is not None else None
    m.detail = f"{embedding['embedded']} embedded, {embedding['reused']} from the embedding cache"
    _take(ctx, embedding, m)


def _take(ctx: RunContext, record: dict, m: StageMetric) -> None:
    ctx.embedding = record
    ctx.item_ids, ctx.text_vectors = read_embeddings(ctx.output, TABLE, "item_id")
    m.rows = record["embedded"]


def _covers_catalogue(ctx: RunContext) -> None:
    if ctx.item_ids != ctx.texts.column("item_id").to_pylist():
        raise RuntimeError("item embeddings do not cover the catalogue one-to-one")  # internal bug


STAGE = Stage("embed-items", "items", run=_embed, writes=(TABLE,), resumable=True,
              record=lambda ctx: ctx.embedding, resume=_take, after=_covers_catalogue)
