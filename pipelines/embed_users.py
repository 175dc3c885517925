"""Stage 4: user histories -> user vectors, with a pool of user-tower actors.

Writes the top-K stage's input (histories plus vectors) to the run's work area, then the
published `user_embeddings/` table as a projection of it (three columns read back).
"""

from __future__ import annotations

import pyarrow as pa
import ray

from chatrec import schemas
from chatrec.runtime import ActorPlan
from pipelines.embed_items import blocks

# Users per block: a block of 4096 users with 50-item histories gathers ~200k item vectors
# (~300 MB at dim 384) at most; small enough for a worker, large enough to amortise a task.
USERS_PER_BLOCK = 4096


def embed_users(
    histories: pa.Table,
    *,
    tower: type,
    tower_kwargs: dict,
    dim: int,
    plan: ActorPlan,
    work_path: str,
    out_path: str,
) -> None:
    """Histories -> user vectors with the user tower `tower` (a Ray Data callable class:
    RecencyMeanUserEncoder, or the matcher's MatcherUserEncoder), loaded once per actor."""
    ds = ray.data.from_arrow(blocks(histories, USERS_PER_BLOCK)).map_batches(
        tower,
        fn_constructor_kwargs=tower_kwargs,
        batch_size=USERS_PER_BLOCK,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
        num_gpus=plan.num_gpus,
    )
    ds.write_parquet(work_path)
    published = schemas.user_embeddings(dim)
    ray.data.read_parquet(work_path, columns=published.names).map_batches(
        lambda t: t.cast(published), batch_format="pyarrow"
    ).write_parquet(out_path)
