"""Parquet output: rows/s and bytes per user, for the two ways the product writes tables.

- Ray Data workers (`Dataset.write_parquet`, one file per block): how every stage writes;
- the driver (`chatrec.publish.RunOutput.write_table`): the fallback rows, rejects, small tables.

Plus the same table with zstd instead of the default snappy, to show what compression buys.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from bench.context import Context, table_blocks
from bench.measure import Summary, interleave
from chatrec.publish import RunOutput
from pipelines.embed_users import USERS_PER_BLOCK


def _bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*.parquet"))


def run(ctx: Context, recommendations: pa.Table, users: int, stage_output: str, item_embeddings: str | None) -> dict:
    k = recommendations.num_rows // max(users, 1)
    rows_per_block = USERS_PER_BLOCK * k  # the top-K stage's blocks: 4096 users' rows
    outs: dict[str, str] = {}

    def ray_write() -> None:
        outs["ray"] = ctx.scratch("parquet-ray")
        ray.data.from_arrow(table_blocks(recommendations, rows_per_block)).write_parquet(outs["ray"])

    def driver_write() -> None:
        output = RunOutput(ctx.scratch("parquet-driver"), "bench")
        output.prepare()
        output.write_table("recommendations", recommendations)
        outs["driver"] = output.path("recommendations")

    def zstd_write() -> None:
        outs["zstd"] = ctx.scratch("parquet-zstd")
        pq.write_table(recommendations, os.path.join(outs["zstd"], "part-00000.parquet"), compression="zstd")

    seconds = interleave({"Ray Data workers (snappy)": ray_write, "driver RunOutput (snappy)": driver_write,
                          "driver, zstd": zstd_write}, 3)
    paths = {"Ray Data workers (snappy)": "ray", "driver RunOutput (snappy)": "driver", "driver, zstd": "zstd"}
    rows = {}
    for name, values in seconds.items():
        median = Summary.of(values).median
        size = _bytes(outs[paths[name]])
        rows[name] = {"rows_per_s": round(recommendations.num_rows / median, 0), "seconds": round(median, 3),
                      "bytes_per_user": round(size / users, 1), "bytes_per_row": round(size / recommendations.num_rows, 1)}
    result = {"rows": recommendations.num_rows, "users": users, "top_k": k, "writers": rows,
              "top_k_stage_output_bytes_per_user": round(_bytes(stage_output) / users, 1),
              "in_memory_bytes_per_user": round(recommendations.nbytes / users, 1)}
    if item_embeddings:
        items = sum(pq.read_metadata(p).num_rows for p in Path(item_embeddings).rglob("*.parquet"))
        result["item_embeddings_bytes_per_item"] = round(_bytes(item_embeddings) / max(items, 1), 1)
    return result
