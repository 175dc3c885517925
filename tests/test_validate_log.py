"""A log validated on the cluster in chunks (pipelines.validate_log) gives what the driver's
one pass gives: the same valid rows, the same rejects with the file's row numbers, the same
errors naming the same file, column and row."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from chatrec import schemas
from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.new_item_demand import LogTimes
from chatrec.readers import read_table
from chatrec.validation import validate_interactions
from pipelines.validate_log import plan_log, validate_log_on_cluster

CATALOGUE = pa.array([f"i{j}" for j in range(6)])


def _log(n, offset=0):
    rows = []
    for r in range(n):
        i = r + offset
        rows.append({"user_id": f"u{i % 4}" if i % 7 else " ", "item_id": f"i{i % 8}",  # i6, i7 unknown
                     "timestamp": str(1000 + i) if i % 5 else "soon"})
    return rows


def _driver(table: TableInput):
    return validate_interactions(read_table(table, id_columns=("user_id", "item_id")), location=table.display,
                                 item_ids=CATALOGUE)


def _cluster(table: TableInput, tmp_path, rows_per_chunk):
    plan = plan_log(table, rows_per_chunk)
    out = {k: str(tmp_path / k) for k in ("valid", "rejects", "users")}
    result = validate_log_on_cluster(plan, table=table, item_ids=CATALOGUE, valid_path=out["valid"],
                                     rejects_path=out["rejects"], users_path=out["users"])
    read = lambda k: pads.dataset(out[k], format="parquet").to_table() if os.path.exists(out[k]) else None  # noqa: E731
    return plan, result, read("valid"), read("rejects"), read("users")


def test_chunks_of_row_groups_and_whole_text_files_match_the_driver(ray_cluster, tmp_path):
    data = tmp_path / "log"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(_log(15)), data / "a.parquet", row_group_size=3)
    with open(data / "b.csv", "w") as f:
        f.write("user_id,item_id,timestamp\n" + "".join(f"{r['user_id']},{r['item_id']},{r['timestamp']}\n"
                                                        for r in _log(9, offset=100)))
    table = TableInput(path=str(data))
    plan, result, valid, rejects, users = _cluster(table, tmp_path, rows_per_chunk=4)
    # 3-row groups in chunks of at least 4 rows: rows 1-6, 7-12, 13-15; the CSV whole.
    assert [(c.row_groups, c.first_row) for c in plan.chunks] == [([0, 1], 0), ([2, 3], 6), ([4], 12), (None, 0)]
    driver = _driver(table)
    key = [("source", "ascending"), ("row", "ascending")]
    assert rejects.cast(schemas.REJECTS).sort_by(key).equals(driver.rejects.sort_by(key))
    # Rows of later chunks keep the file's numbers: null ids at 1, 8, 15; bad times at 1, 6, 11; unknown items at 7, 8, 15.
    assert {r["row"] for r in rejects.to_pylist() if r["source"].endswith("a.parquet")} == {1, 6, 7, 8, 11, 15}
    by = [("user_id", "ascending"), ("item_id", "ascending"), ("timestamp", "ascending")]
    assert valid.cast(schemas.INTERACTIONS).sort_by(by).equals(driver.table.sort_by(by))
    assert (result.rows_read, result.valid, result.rejected) == (24, driver.table.num_rows, driver.rejects.num_rows)
    ids = CATALOGUE.to_pylist()
    assert {ids[r] for r in result.times.items_seen.nonzero()[0]} == set(driver.table.column("item_id").to_pylist())
    # The chunks' per-item and per-day sums (new-item demand) add up to the whole valid log's.
    rows = pc.index_in(driver.table.column("item_id"), value_set=CATALOGUE).to_numpy(zero_copy_only=False)
    whole = LogTimes.of(driver.table.column("timestamp").to_numpy(), rows, len(CATALOGUE))
    assert np.array_equal(result.times.first_seen, whole.first_seen)
    assert np.array_equal(result.times.interactions, whole.interactions) and result.times.per_day == whole.per_day
    # The users of rejected rows are there to be covered; one with a valid row elsewhere is harmless.
    assert users is not None and set(users.column("user_id").to_pylist()) <= {"u0", "u1", "u2", "u3"}


def test_an_error_in_a_later_chunk_names_the_files_row(ray_cluster, tmp_path):
    rows = [{"user_id": "u1", "item_id": 1.0 if r >= 8 else 2.0, "timestamp": 5} for r in range(12)]
    rows = [{**r, "item_id": None} if i < 9 else r for i, r in enumerate(rows)]
    path = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    table = TableInput(path=str(path))
    with pytest.raises(InputDataError) as driver:
        _driver(table)
    with pytest.raises(InputDataError) as cluster:
        _cluster(table, tmp_path, rows_per_chunk=3)
    assert str(cluster.value) == str(driver.value)
    assert cluster.value.row == 10 and cluster.value.column == "item_id"


def test_a_missing_column_is_found_in_the_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item_id,timestamp\nu1,i1,5\n")
    table = TableInput(path=str(path), rename={"user": "customer"})
    with pytest.raises(InputDataError) as driver:
        _driver(table)
    with pytest.raises(InputDataError) as planned:
        plan_log(table)  # no Ray needed: the header says it
    assert planned.value.column == driver.value.column == "user_id"
    assert "interactions table has no 'user_id' column" in str(planned.value)
