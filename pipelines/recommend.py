"""Stages 5-6: user vectors -> top-K items per user, seen items excluded, each explained.

The FAISS index is built once on the driver, serialised into the object store once, and
loaded once per actor; users are sharded across the actors block by block.
"""

from __future__ import annotations

import ray

from chatrec.config import RetrievalConfig
from chatrec.progress import ProgressCounter, counted
from chatrec.recommender import Recommender
from chatrec.runtime import ActorPlan
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
    users_per_block: int = USERS_PER_BLOCK,
    progress: ProgressCounter | None = None,
) -> None:
    """`progress` counts the users each actor finishes (chatrec.progress)."""
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
            new_item_slots=retrieval.new_item_slots,
            new_rows=new_rows,
        ), progress),
        batch_size=users_per_block,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    ds.write_parquet(out_path)
