"""Stage 4: user histories -> user vectors, with a pool of user-tower actors.

Writes the top-K stage's input (histories plus vectors) to the run's work area, then the
published `user_embeddings/` table as a projection of it (three columns read back).
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from chatrec import schemas
from chatrec.progress import ProgressCounter, counted
from chatrec.runtime import ActorPlan
from chatrec.sources import filesystem_for
from pipelines.embed_items import blocks

USERS_PER_BLOCK = 4096  # the default of history.users_per_block


def embed_users(
    histories: pa.Table | str,
    *,
    tower: type,
    tower_kwargs: dict,
    dim: int,
    plan: ActorPlan,
    work_path: str,
    out_path: str,
    users_per_block: int = USERS_PER_BLOCK,
    in_driver_below: int = 0,
    previous: tuple[pafs.FileSystem, str] | None = None,
    partitions: int = 1,
    progress: ProgressCounter | None = None,
) -> None:
    """Histories -> user vectors with the user tower `tower` (a Ray Data callable class:
    RecencyMeanUserEncoder, or the matcher's MatcherUserEncoder), loaded once per actor.

    `histories` is a table, or the path of the histories work table
    (pipelines.histories.BUCKETED_HISTORIES), streamed from there: its users with a history.
    Vectors already in `work_path` (reused by a refresh) are published with the new ones.
    Fewer than `in_driver_below` users on CPU are embedded in the driver: starting the pool
    would cost more than the work. `progress` counts the users each actor finishes.

    `previous` (filesystem, path): a refresh's previous user_embeddings, joined to the
    histories path on the cluster by (user_id, history_key) in `partitions` hash partitions:
    a matched user's vector is reused, not recomputed, and its row in `work_path` says so
    (REUSED).
    """
    published = schemas.user_embeddings(dim)
    if isinstance(histories, pa.Table) and histories.num_rows < in_driver_below and plan.device == "cpu":
        fs, work = filesystem_for(work_path)
        fs.create_dir(work, recursive=True)
        if histories.num_rows:
            pq.write_table(tower(**tower_kwargs)(histories), posixpath.join(work, "embedded-in-driver.parquet"),
                           filesystem=fs)
        out_fs, out = filesystem_for(out_path)
        out_fs.create_dir(out, recursive=True)
        vectors = pads.dataset(work, filesystem=fs, format="parquet").to_table(columns=published.names)
        pq.write_table(vectors.cast(published), posixpath.join(out, "part-00000.parquet"), filesystem=out_fs)
        return
    if isinstance(histories, str):
        ds = ray.data.read_parquet(histories, columns=schemas.HISTORIES.names).map_batches(
            with_history, batch_format="pyarrow", batch_size=None)
        if previous is not None:
            before = ray.data.read_parquet(previous[1], filesystem=previous[0],
                                           columns=["user_id", "history_key", "embedding"]).map_batches(
                _previous_vectors, batch_format="pyarrow", batch_size=None)
            ds = ds.join(before, "left_outer", partitions, on=("user_id", "history_key"))
            tower_kwargs, tower = dict(tower=tower, tower_kwargs=tower_kwargs, dim=dim), ReuseOrEmbed
    else:
        ds = ray.data.from_arrow(blocks(histories, users_per_block)) if histories.num_rows else None
    if ds is not None:
        ds.map_batches(
            **counted(tower, tower_kwargs, progress),
            batch_size=users_per_block,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
        ).write_parquet(work_path)
    ray.data.read_parquet(work_path, columns=published.names).map_batches(
        lambda t: t.cast(published), batch_format="pyarrow"
    ).write_parquet(out_path)


REUSED = "reused"  # a work-table column of the refresh's join: the vector is the previous run's


class ReuseOrEmbed:
    """A Ray Data callable class: histories joined to the previous run's vectors
    (`previous_embedding`, null where the history key changed) -> user vectors, computed by
    `tower` only for the users without one, with a REUSED column."""

    def __init__(self, *, tower: type, tower_kwargs: dict, dim: int) -> None:
        self.tower = tower(**tower_kwargs)
        self.schema = schemas.user_vectors(dim)

    def __call__(self, batch: pa.Table) -> pa.Table:
        found = pc.is_valid(batch.column("previous_embedding"))
        reused = batch.filter(found)
        reused = reused.select(schemas.HISTORIES.names).append_column(
            "embedding", reused.column("previous_embedding")).cast(self.schema)
        todo = batch.filter(pc.invert(found)).select(schemas.HISTORIES.names)
        parts = [reused.append_column(REUSED, pa.array([True] * reused.num_rows, pa.bool_()))]
        if todo.num_rows:
            computed = self.tower(todo)
            parts.append(computed.append_column(REUSED, pa.array([False] * computed.num_rows, pa.bool_())))
        return pa.concat_tables(parts).sort_by("user_id")


def _previous_vectors(table: pa.Table) -> pa.Table:
    """A published user_embeddings block -> its keyed rows, the vector renamed for the join."""
    table = table.filter(pc.is_valid(table.column("history_key")))
    return table.rename_columns(["user_id", "history_key", "previous_embedding"])


def with_history(histories: pa.Table) -> pa.Table:
    """The users with a history (the others get the popularity fallback)."""
    return histories.filter(pc.greater(histories.column("history_len"), 0))


def split_reusable(histories: pa.Table, previous: pa.Table | None, dim: int) -> tuple[pa.Table, pa.Table]:
    """(user vectors reused from `previous`, histories still to embed).

    `previous` is a published user_embeddings table (user_id, history_key, embedding); a
    user's vector is reused when its history_key is unchanged.
    """
    schema = schemas.user_vectors(dim)
    if previous is None or previous.num_rows == 0 or histories.num_rows == 0:
        return schema.empty_table(), histories
    before = previous.filter(pc.is_valid(previous.column("history_key")))
    if before.num_rows == 0:
        return schema.empty_table(), histories
    at = pc.index_in(histories.column("user_id"), value_set=before.column("user_id"))  # (n,) row in before
    found = pc.is_valid(at)
    same = pc.and_kleene(found, pc.equal(histories.column("history_key"),
                                         before.column("history_key").take(pc.fill_null(at, 0))))
    same = pc.fill_null(same, False)
    reused = histories.filter(same).append_column("embedding", before.column("embedding").take(at.filter(same)))
    return reused.cast(schema), histories.filter(pc.invert(same))
