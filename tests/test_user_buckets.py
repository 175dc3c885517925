"""User buckets (chatrec.user_buckets), the histories built by bucket on the cluster
(pipelines.histories): the same histories as the whole log built in one process, and a
refresh's reuse of user vectors joined on the cluster: the same as compared in the driver."""

import random

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from chatrec import schemas
from chatrec.histories import build_histories, history_keys, item_keys
from chatrec.encoder import to_fixed_size_list
from chatrec.runtime import ActorPlan
from chatrec.user_buckets import bucket_count, bucket_of, user_buckets
from pipelines.embed_users import REUSED, embed_users, split_reusable
from pipelines.histories import BUCKETED_HISTORIES, build_histories_on_cluster, users_per_item


@pytest.mark.parametrize("text, fnv", [
    # FNV-1a 64 test vectors (Fowler, Noll, Vo: "FNV hash" reference test suite).
    ("", 0xCBF29CE484222325), ("a", 0xAF63DC4C8601EC8C), ("foobar", 0x85944171F73967E8),
])
def test_bucket_is_fnv1a64_of_the_utf8_id(text, fnv):
    for buckets in (3, 64, 4096):
        assert bucket_of(text, buckets) == fnv % buckets
        assert user_buckets(pa.array([text]), buckets).to_pylist() == [fnv % buckets]


def test_vectorised_buckets_equal_the_one_by_one_function():
    rng = random.Random(7)
    alphabet = "ab0_-/ é日本\U0001F600"
    ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))) for _ in range(500)]
    ids += ["x" * 100_000]  # a huge id takes the one-by-one path
    array = pa.chunked_array([ids[:200], ids[200:]])
    for buckets in (1, 2, 7, 128):
        assert user_buckets(array, buckets).to_pylist() == [bucket_of(u, buckets) for u in ids]
    assert user_buckets(pa.array(ids).slice(100, 50), 7).to_pylist() == [bucket_of(u, 7) for u in ids[100:150]]


def test_bucket_count_is_a_power_of_two_that_grows_with_the_log():
    counts = [bucket_count(n) for n in (0, 1, 90_000, 131_072, 131_073, 10_800_000, 10**12)]
    assert counts == [1, 1, 1, 1, 2, 128, 4096]
    assert all(c & (c - 1) == 0 for c in counts)


def _toy(n_users=300, n_items=40, seed=3):
    rng = np.random.default_rng(seed)
    items = pa.table({"item_id": [f"i{j}" for j in range(n_items)], "row": pa.array(range(n_items), pa.int32()),
                      "text_sha256": [f"h{j}" for j in range(n_items)]})
    n = 3000
    log = pa.table({
        "user_id": [f"user-{u}" for u in rng.integers(0, n_users, n)],
        "item_id": [f"i{j}" for j in rng.integers(0, n_items, n)],
        "timestamp": pa.array(rng.integers(0, 50, n), pa.int64()),  # many ties: the tie-break is tested too
    })
    users = pa.table({"user_id": ["user-1", "user-2", "only-a-profile"],
                      "attributes": [["age: 30"], None, ["job: writer"]]}).cast(schemas.USERS)
    excluded = pa.table({"user_id": ["user-3", "user-3", "nobody"], "item_id": ["i5", "i6", "i1"]})
    return items, log, users, excluded


@pytest.mark.parametrize("on_cluster", [True, False])
def test_histories_by_bucket_equal_the_whole_log_built_at_once(ray_cluster, tmp_path, on_cluster):
    items, log, users, excluded = _toy()
    cover = pa.array(["all-rows-rejected"])
    build_histories_on_cluster(
        log_path=str(_write(tmp_path / "log", log)), users=users, excluded=excluded, cover=cover,
        item_rows=items.select(["item_id", "row"]), item_keys=item_keys(items), tower_key="t", max_items=5,
        buckets=8,
        out_path=str(tmp_path / "histories"), in_driver=None if on_cluster else log,
    )
    got = pads.dataset(str(tmp_path / "histories"), format="parquet").to_table()
    assert got.schema.equals(BUCKETED_HISTORIES)
    expected = build_histories(log, items, max_items=5, users=users, excluded=excluded,
                               extra_user_ids=pa.concat_arrays([users.column("user_id").combine_chunks(), cover]))
    want = expected.histories
    want = want.set_column(want.schema.get_field_index("history_key"), "history_key",
                           pa.array(history_keys(want, item_keys(items), "t"), pa.int64()))
    with_history = got.filter(pads.field("history_len") > 0).sort_by("user_id")
    assert with_history.drop(["bucket"]).equals(want.sort_by("user_id"))
    without = got.filter(pads.field("history_len") == 0)
    assert sorted(without.column("user_id").to_pylist()) == expected.fallback_user_ids.to_pylist() == [
        "all-rows-rejected", "only-a-profile"]
    assert got.column("bucket").to_pylist() == [bucket_of(u, 8) for u in got.column("user_id").to_pylist()]
    if on_cluster:
        assert len(set(got.column("bucket").to_pylist())) > 1


def _write(directory, table):
    directory.mkdir()
    pq.write_table(table.slice(0, 1000), directory / "part-0.parquet")
    pq.write_table(table.slice(1000), directory / "part-1.parquet")
    return directory


class ConstantTower:
    """A user tower whose every vector is `value` in each dimension: computed vectors are
    told apart from reused ones."""

    def __init__(self, *, dim: int, value: float) -> None:
        self.dim, self.value = dim, value

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = np.full((batch.num_rows, self.dim), self.value, np.float32)
        return batch.select(schemas.HISTORIES.names).append_column("embedding", to_fixed_size_list(vectors)).cast(
            schemas.user_vectors(self.dim))


def test_a_refresh_joins_previous_vectors_on_the_cluster_as_the_driver_compares_them(ray_cluster, tmp_path):
    items, log, users, excluded = _toy()
    keys = item_keys(items)
    build_histories_on_cluster(
        log_path="", users=users, excluded=None, cover=None, item_rows=items.select(["item_id", "row"]),
        item_keys=keys, tower_key="t", max_items=5, buckets=4, out_path=str(tmp_path / "histories"), in_driver=log)
    histories = pads.dataset(str(tmp_path / "histories"), format="parquet").to_table()
    with_history = histories.filter(pads.field("history_len") > 0).select(schemas.HISTORIES.names)
    # The previous run: half the users with the same key, some with another key, one without.
    rng = np.random.default_rng(0)
    ids, hkeys = with_history.column("user_id").to_pylist(), with_history.column("history_key").to_pylist()
    dim = 4
    chosen = rng.permutation(len(ids))[: len(ids) * 3 // 4]
    prev_keys = [hkeys[i] if j % 3 else hkeys[i] + 1 for j, i in enumerate(chosen)]
    prev_keys[0] = None
    previous = pa.table({
        "user_id": [ids[i] for i in chosen], "history_key": pa.array(prev_keys, pa.int64()),
        "embedding": to_fixed_size_list(rng.standard_normal((len(chosen), dim)).astype(np.float32)),
    })
    (tmp_path / "previous").mkdir()
    pq.write_table(previous, tmp_path / "previous" / "part-0.parquet")
    embed_users(
        str(tmp_path / "histories"), tower=ConstantTower, tower_kwargs=dict(dim=dim, value=0.5), dim=dim,
        plan=ActorPlan(num_actors=1, num_cpus=1, num_gpus=0, threads=1, device="cpu"),
        work_path=str(tmp_path / "work"), out_path=str(tmp_path / "published"),
        previous=(pafs.LocalFileSystem(), str(tmp_path / "previous")), partitions=3,
    )
    got = pads.dataset(str(tmp_path / "work"), format="parquet").to_table().sort_by("user_id")
    reused, todo = split_reusable(with_history, previous, dim)
    assert 0 < reused.num_rows < with_history.num_rows
    got_reused = got.filter(pads.field(REUSED)).drop([REUSED])
    assert got_reused.equals(reused.sort_by("user_id"))
    computed = got.filter(~pads.field(REUSED))
    assert computed.column("user_id").to_pylist() == sorted(todo.column("user_id").to_pylist())
    assert all(v == [0.5] * dim for v in computed.column("embedding").to_pylist())
    published = pads.dataset(str(tmp_path / "published"), format="parquet").to_table()
    assert published.num_rows == with_history.num_rows


def test_users_per_item_counts_each_users_distinct_items(ray_cluster, tmp_path):
    items, log, users, excluded = _toy()
    build_histories_on_cluster(
        log_path=str(_write(tmp_path / "log", log)), users=None, excluded=None, cover=None,
        item_rows=items.select(["item_id", "row"]), item_keys=item_keys(items), tower_key="t", max_items=5,
        buckets=8, out_path=str(tmp_path / "histories"))
    got = users_per_item(str(tmp_path / "histories"), items.num_rows)
    pairs = {(u, int(i[1:])) for u, i in zip(log.column("user_id").to_pylist(), log.column("item_id").to_pylist())}
    want = {}
    for _, row in pairs:
        want[row] = want.get(row, 0) + 1
    assert dict(zip(got.column("row").to_pylist(), got.column("users").to_pylist())) == want
