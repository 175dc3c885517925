"""Stage 5 on the cluster: the validated log -> every user's history, by user bucket.

One Ray Data pipeline: the log (read back from the run's work area), the users table's
profile texts and the excluded pairs are tagged with their kind and their user's bucket
(chatrec.user_buckets), hash-shuffled once so each bucket's rows meet in one block, and each
block's histories are built with Polars (chatrec.histories.build_histories, vectorised
over the block: no call per user). Users with nothing usable get an empty history
(history_len 0): the top-K stage gives them the popularity fallback. The driver holds only
the catalogue's item rows and keys, broadcast through the object store.
"""

from __future__ import annotations

import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.aggregate import AggregateFnV2

from chatrec import faults, schemas
from chatrec.histories import build_histories, history_keys, profile_texts
from chatrec.progress import ProgressCounter
from chatrec.sources import filesystem_for
from chatrec.user_buckets import BUCKET_COLUMN, with_buckets

# What the shuffle carries: one row per interaction, excluded pair, users-table row, or user
# to cover whose every interaction was rejected (COVER: the popularity fallback's).
LOG, EXCLUDED, PROFILE, COVER = 0, 1, 2, 3
SHUFFLED = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()),
    ("profile_text", pa.string()), ("kind", pa.int8()),
])
# The work table the later stages stream: schemas.HISTORIES and the bucket.
BUCKETED_HISTORIES = schemas.HISTORIES.append(pa.field(BUCKET_COLUMN, pa.int32()))


def build_histories_on_cluster(
    *,
    log_path: str,
    users: pa.Table | None,
    excluded: pa.Table | None,
    cover: pa.Array | None,
    cover_path: str | None = None,
    item_rows: pa.Table,
    item_keys: np.ndarray,
    tower_key: str,
    max_items: int,
    buckets: int,
    out_path: str,
    in_driver: pa.Table | None = None,
    progress: ProgressCounter | None = None,
) -> None:
    """Writes BUCKETED_HISTORIES to `out_path`: one row per user of the log or of `users`.

    `log_path`: validated interactions (schemas.INTERACTIONS) as Parquet; `users`
    (schemas.USERS), `excluded` (user_id, item_id) and `cover` (user ids with no valid
    interaction, who still get recommendations) come from the driver, or `cover_path` names
    Parquet of such ids (user_id; a user there with a valid row is not harmed); `item_rows`
    (item_id, row) and `item_keys` ((n_items,) uint64, chatrec.histories.item_keys) are the
    catalogue's. `progress` counts the users each worker finishes.

    Given `in_driver` (the log itself, when it is small), the same work runs in the driver:
    for a small log, starting the shuffle and its workers costs more than the work.
    """
    if in_driver is not None:
        extra = _extra_rows(users, excluded, cover)
        block = with_buckets(pa.concat_tables([_tagged(in_driver, kind=LOG), *extra]), buckets)
        histories = BucketHistories(shared={"item_rows": item_rows, "item_keys": item_keys}, tower_key=tower_key,
                                    max_items=max_items, buckets=buckets)(block)
        fs, inner = filesystem_for(out_path)
        fs.create_dir(inner, recursive=True)
        pq.write_table(histories, posixpath.join(inner, "built-in-driver.parquet"), filesystem=fs)
        return
    shared = ray.put({"item_rows": item_rows, "item_keys": item_keys})
    ds = ray.data.read_parquet(log_path, columns=["user_id", "item_id", "timestamp"]).map_batches(
        _tagged, fn_kwargs=dict(kind=LOG), batch_format="pyarrow", batch_size=None)
    extra = _extra_rows(users, excluded, cover)
    if extra:
        ds = ds.union(ray.data.from_arrow(pa.concat_tables(extra)))
    if cover_path is not None:
        ds = ds.union(ray.data.read_parquet(cover_path).map_batches(
            _tagged, fn_kwargs=dict(kind=COVER), batch_format="pyarrow", batch_size=None))
    ds = ds.map_batches(with_buckets, fn_kwargs=dict(buckets=buckets), batch_format="pyarrow", batch_size=None)
    ds = ds.repartition(buckets, shuffle=True, keys=[BUCKET_COLUMN])
    # Tasks, not an actor pool: a pool holding every CPU would starve the shuffle before it.
    ds.map_batches(
        _bucket_histories, fn_kwargs=dict(shared=shared, tower_key=tower_key, max_items=max_items,
                                          buckets=buckets, progress=progress),
        batch_size=None, batch_format="pyarrow", num_cpus=1,
    ).write_parquet(out_path)


def _bucket_histories(block: pa.Table, *, shared: ray.ObjectRef, tower_key: str, max_items: int, buckets: int,
                      progress: ProgressCounter | None) -> pa.Table:
    """A Ray Data task: BucketHistories on one shuffled block, counted."""
    if progress is not None and faults.worker_fault(progress.stage):
        faults.in_worker(progress.stage)  # the test suite's crash of a worker
    out = BucketHistories(shared=shared, tower_key=tower_key, max_items=max_items, buckets=buckets)(block)
    if progress is not None:
        progress.add(out.num_rows)
    return out


def users_per_item(histories_path: str, n_items: int) -> pa.Table:
    """(row, users): how many users of the histories work table have each catalogue row among
    their seen items, counted per block by the workers and added up by Ray Data's
    aggregation (no shuffle); rows no one has are absent. (Seen items are the distinct items
    of the valid log, plus any excluded pairs: the driver counts a log with exclusions itself.)"""
    counts = ray.data.read_parquet(histories_path, columns=["seen_rows"]).aggregate(UsersPerRow(n_items))["users"]
    counts = np.asarray(counts, np.int64)  # (n_items,)
    rows = np.flatnonzero(counts)
    return pa.table({"row": pa.array(rows.astype(np.int32)), "users": pa.array(counts[rows])})


class UsersPerRow(AggregateFnV2):
    """Ray Data aggregation: (n_items,) counts of the rows in `seen_rows` lists."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        super().__init__("users", zero_factory=lambda: np.zeros(n_items, np.int64), on="seen_rows", ignore_nulls=True)

    def aggregate_block(self, block: pa.Table) -> np.ndarray:
        rows = pc.list_flatten(block.column("seen_rows")).to_numpy(zero_copy_only=False)
        return np.bincount(rows.astype(np.int64), minlength=self.n_items)

    def combine(self, current: np.ndarray, new: np.ndarray) -> np.ndarray:
        return np.asarray(current) + np.asarray(new)


def _extra_rows(users: pa.Table | None, excluded: pa.Table | None, cover: pa.Array | None) -> list[pa.Table]:
    """The driver's sources as SHUFFLED rows."""
    extra = []
    if users is not None and users.num_rows:
        extra.append(_tagged(profile_texts(users).to_arrow(), kind=PROFILE))
    if excluded is not None and excluded.num_rows:
        extra.append(_tagged(excluded.select(["user_id", "item_id"]), kind=EXCLUDED))
    if cover is not None and len(cover):
        extra.append(_tagged(pa.table({"user_id": cover}), kind=COVER))
    return extra


def _tagged(table: pa.Table, *, kind: int) -> pa.Table:
    """Any of the three sources -> SHUFFLED rows of `kind`."""
    n = table.num_rows
    columns = {
        "user_id": table.column("user_id"),
        "item_id": table.column("item_id") if "item_id" in table.column_names else pa.nulls(n, pa.string()),
        "timestamp": table.column("timestamp") if "timestamp" in table.column_names else pa.nulls(n, pa.int64()),
        "profile_text": (table.column("profile_text") if "profile_text" in table.column_names
                         else pa.nulls(n, pa.string())),
        "kind": pa.array(np.full(n, kind, np.int8), pa.int8()),
    }
    return pa.table(columns).cast(SHUFFLED)


class BucketHistories:
    """A Ray Data callable class: one shuffled block (whole buckets) -> their users'
    BUCKETED_HISTORIES rows, sorted by user_id."""

    def __init__(self, *, shared: dict | ray.ObjectRef, tower_key: str, max_items: int, buckets: int) -> None:
        shared = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
        self.item_rows: pa.Table = shared["item_rows"]
        self.item_keys: np.ndarray = shared["item_keys"]
        self.tower_key = tower_key
        self.max_items = max_items
        self.buckets = buckets

    def __call__(self, block: pa.Table) -> pa.Table:
        if block.num_rows == 0:
            return BUCKETED_HISTORIES.empty_table()
        kind = block.column("kind")
        log = block.filter(pc.equal(kind, LOG)).select(["user_id", "item_id", "timestamp"])
        excluded = block.filter(pc.equal(kind, EXCLUDED)).select(["user_id", "item_id"])
        profiles = block.filter(pc.equal(kind, PROFILE))
        population = build_histories(
            log, self.item_rows, max_items=self.max_items,
            extra_user_ids=block.filter(pc.greater_equal(kind, PROFILE)).column("user_id").combine_chunks(),
            profiles=profiles.select(["user_id", "profile_text"]), excluded=excluded,
        )
        histories = population.histories
        if len(population.fallback_user_ids):
            histories = pa.concat_tables([histories, _empty_histories(population.fallback_user_ids)])
        histories = histories.set_column(
            histories.schema.get_field_index("history_key"), "history_key",
            pa.array(history_keys(histories, self.item_keys, self.tower_key), pa.int64()),
        ).sort_by("user_id")
        return with_buckets(histories, self.buckets).cast(BUCKETED_HISTORIES)


def _empty_histories(user_ids: pa.Array) -> pa.Table:
    """Users with no usable interaction: no history (the popularity fallback's users)."""
    n = len(user_ids)
    empty = pa.array([[]] * n, pa.list_(pa.int32()))
    return pa.table({
        "user_id": user_ids, "recent_rows": empty, "seen_rows": empty,
        "history_len": pa.array(np.zeros(n, np.int32), pa.int32()),
        "profile_text": pa.nulls(n, pa.string()), "history_key": pa.nulls(n, pa.int64()),
    }).cast(schemas.HISTORIES)
