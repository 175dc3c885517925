"""Stages 5-6: user vectors -> top-K items per user, seen items excluded, each explained.

The FAISS index is built once on the driver, serialised into the object store once, and
loaded once per actor; users are sharded across the actors block by block.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray

from chatrec.config import RetrievalConfig
from chatrec.progress import ProgressCounter, counted
from chatrec.recommender import Recommender, popularity_rows
from chatrec.runtime import ActorPlan
from chatrec.user_buckets import BUCKET_COLUMN, with_buckets
from pipelines.embed_users import USERS_PER_BLOCK


def recommend(
    *,
    user_vectors_path: str,
    index_ref: ray.ObjectRef,
    catalogue_ref: ray.ObjectRef,
    retrieval: RetrievalConfig,
    plan: ActorPlan,
    run_id: str,
    out_path: str,
    strategy: str = "content",
    fusion: ray.ObjectRef | None = None,
    new_rows: ray.ObjectRef | None = None,
    new_item_slots: int = 0,
    users_per_block: int = USERS_PER_BLOCK,
    buckets: int = 1,
    progress: ProgressCounter | None = None,
) -> None:
    """Writes `out_path` partitioned by user bucket (`write_by_bucket`). `new_item_slots` of
    each list go to the items at `new_rows` (the top-k stage decides how many; retrieval's own
    setting may be "auto"). `progress` counts the users each actor finishes (chatrec.progress)."""
    ds = ray.data.read_parquet(user_vectors_path).map_batches(
        **counted(Recommender, dict(
            index=index_ref,
            catalogue=catalogue_ref,
            top_k=retrieval.top_k,
            search_batch_size=retrieval.batch_size,
            run_id=run_id,
            backend="gpu" if plan.device == "cuda" else "cpu",
            threads=plan.threads,
            strategy=strategy,
            fusion=fusion,
            new_item_slots=new_item_slots,
            new_rows=new_rows,
            buckets=buckets,
        ), progress),
        batch_size=users_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    write_by_bucket(ds, out_path)


def popularity_fallback(*, histories_path: str, popularity: pa.Table, top_k: int, run_id: str, out_path: str,
                        buckets: int) -> None:
    """The popularity fallback's rows for the users of the histories work table who have no
    history (pipelines.histories), written by the workers as `recommend` writes."""
    ds = ray.data.read_parquet(histories_path, columns=["user_id", "history_len"]).map_batches(
        _popular, fn_kwargs=dict(popularity=ray.put(popularity.slice(0, top_k)), top_k=top_k, run_id=run_id),
        batch_format="pyarrow", batch_size=None,
    )
    write_by_bucket(ds, out_path, buckets)


def _popular(histories: pa.Table, *, popularity: pa.Table | ray.ObjectRef, top_k: int, run_id: str) -> pa.Table:
    popularity = ray.get(popularity) if isinstance(popularity, ray.ObjectRef) else popularity
    users = histories.filter(pc.equal(histories.column("history_len"), 0)).column("user_id").to_pylist()
    return popularity_rows(users, popularity, top_k=top_k, run_id=run_id)


def write_by_bucket(ds: ray.data.Dataset, out_path: str, buckets: int | None = None) -> None:
    """Recommendation rows -> `out_path/bucket=<b>/*.parquet` (Hive partitions by
    chatrec.user_buckets), so a serving loader reads one user's rows from one directory.
    With `buckets` the user ids are hashed here; without, the rows already carry the bucket
    column (the top-K actors hash each user once, not each of its K rows)."""
    if buckets is not None:
        ds = ds.map_batches(with_buckets, fn_kwargs=dict(buckets=buckets), batch_format="pyarrow", batch_size=None)
    ds.write_parquet(out_path, partition_cols=[BUCKET_COLUMN])
