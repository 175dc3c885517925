"""Stage 3: item texts -> item embeddings, with a pool of encoder actors (one per GPU, or
CPU actors sized to the cores), written straight to Parquet by the workers."""

from __future__ import annotations

import pyarrow as pa
import ray

from chatrec import schemas
from chatrec.config import EncoderConfig
from chatrec.encoder import TextEncoder
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
) -> None:
    """schemas.ITEM_TEXT -> Parquet of schemas.item_embeddings(dim) at `out_path`."""
    ds = ray.data.from_arrow(blocks(item_text, encoder.rows_per_block)).map_batches(
        TextEncoder,
        fn_constructor_kwargs=dict(
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
        ),
        batch_size=encoder.rows_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    ds.write_parquet(out_path)
