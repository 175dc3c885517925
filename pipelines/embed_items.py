"""Stage 3: item texts -> item embeddings, with a pool of encoder actors (one per GPU, or
CPU actors sized to the cores), written straight to Parquet by the workers. With the
embedding cache, only texts the cache has no vector for are encoded."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from chatrec import schemas
from chatrec.config import EncoderConfig
from chatrec.embedding_cache import EmbeddingCache
from chatrec.encoder import TextEncoder
from chatrec.progress import ProgressCounter, counted
from chatrec.publish import RunOutput
from chatrec.runtime import ActorPlan


def blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """Cut a driver-side table into Ray Data blocks (zero-copy slices)."""
    return [table.slice(i, rows_per_block) for i in range(0, max(table.num_rows, 1), rows_per_block)]


def embed_items(
    item_text: pa.Table,
    *,
    encoder: EncoderConfig,
    plan: ActorPlan,
    precision: str,
    fingerprint: str,
    dim: int,
    out_path: str,
    progress: ProgressCounter | None = None,
) -> None:
    """schemas.ITEM_TEXT -> Parquet of schemas.item_embeddings(dim) at `out_path`; `progress`
    counts the texts each actor finishes (chatrec.progress)."""
    ds = ray.data.from_arrow(blocks(item_text, encoder.rows_per_block)).map_batches(
        **counted(TextEncoder, _encoder_kwargs(encoder=encoder, plan=plan, precision=precision,
                                               fingerprint=fingerprint, dim=dim), progress),
        batch_size=encoder.rows_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    ds.write_parquet(out_path)


def _encoder_kwargs(*, encoder: EncoderConfig, plan: ActorPlan, precision: str, fingerprint: str, dim: int) -> dict:
    return dict(
        model=encoder.model,
        fingerprint=fingerprint,
        max_length=encoder.max_length,
        batch_size=encoder.batch_size,
        device=plan.device,
        precision=precision,
        num_threads=plan.threads,
        # text_sha256 rides along so the published table says which text each vector encodes.
        keep_columns=("item_id", "text_sha256"),
        constants={"model_fingerprint": fingerprint},
        output_schema=schemas.item_embeddings(dim),
    )


def embed_items_cached(
    item_text: pa.Table,
    *,
    cache: EmbeddingCache | None,
    output: RunOutput,
    name: str,
    fingerprint: str,
    dim: int,
    in_driver_below: int = 0,
    **embed_kwargs,
) -> dict:
    """embed_items for the cache's misses only; the hits are copied from the cache into the
    same table. Returns {"embedded": n, "reused": m}. Newly computed vectors are added to
    the cache once the table is complete."""
    out_path = output.path(name)
    cached = cache.lookup(pc.unique(item_text.column("text_sha256"))) if cache is not None else None
    hit = (pc.is_in(item_text.column("text_sha256"), value_set=cached.column("text_sha256"))
           if cached is not None and cached.num_rows else pa.repeat(pa.scalar(False), item_text.num_rows))
    misses, hits = item_text.filter(pc.invert(hit)), item_text.filter(hit)
    if misses.num_rows and misses.num_rows < in_driver_below and embed_kwargs["plan"].device == "cpu":
        # A few texts (a nightly refresh): cheaper here than starting the actor pool.
        # The driver fingerprinted these weights itself, and its torch may use every core.
        kwargs = {k: v for k, v in embed_kwargs.items() if k != "progress"}
        here = {**_encoder_kwargs(fingerprint=fingerprint, dim=dim, **kwargs), "fingerprint": None,
                "num_threads": None}
        output.write_table(name, TextEncoder(**here)(misses), file_name="embedded-in-driver.parquet")
    elif misses.num_rows:
        embed_items(misses, fingerprint=fingerprint, dim=dim, out_path=out_path, **embed_kwargs)
    if hits.num_rows:
        # Arrow's join does not carry list columns: look the rows up by index instead.
        at = pc.index_in(hits.column("text_sha256"), value_set=cached.column("text_sha256"))
        reused = hits.select(["item_id", "text_sha256"]).append_column(
            "embedding", cached.column("embedding").take(at)
        ).append_column("model_fingerprint", pa.repeat(pa.scalar(fingerprint), hits.num_rows))
        schema = schemas.item_embeddings(dim)
        output.write_table(name, reused.select(schema.names).cast(schema), file_name="from-embedding-cache.parquet")
    if cache is not None and misses.num_rows:
        fresh = output.dataset(name).to_table(
            columns=["text_sha256", "embedding"],
            filter=pads.field("text_sha256").isin(misses.column("text_sha256")),
        )
        cache.add(fresh, name=output.run_id)
    return {"embedded": misses.num_rows, "reused": hits.num_rows}
