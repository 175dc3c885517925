"""Readers and validation: formats, ids as strings, schema errors, row-level rejects."""

import json

import pyarrow as pa
import pytest

from chatrec.config import TableInput
from chatrec.errors import InputDataError
from chatrec.readers import read_table
from chatrec.validation import validate_interactions, validate_items, validate_users
from tests.conftest import write_parquet


def items_from(tmp_path, rows, name="items.parquet", **kw):
    path = write_parquet(tmp_path / name, rows)
    raw = read_table(TableInput(path=str(path), **kw), id_columns=("item_id",))
    return validate_items(raw, location=str(path), attributes=None, categories_delimiter="|"), path


def test_csv_ids_stay_strings_and_attributes_render(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("item_id,title,categories,price\n007,Bond,Action|Spy,9.5\n10,Ten,,\n")
    raw = read_table(TableInput(path=str(path)), id_columns=("item_id",))
    v = validate_items(raw, location=str(path), attributes=None, categories_delimiter="|")
    rows = {r["item_id"]: r for r in v.table.to_pylist()}
    assert set(rows) == {"007", "10"}  # not 7
    assert rows["007"]["categories"] == ["Action", "Spy"]
    assert rows["007"]["attributes"] == ["price: 9.5"]
    assert rows["10"]["attributes"] == []


def test_integer_ids_in_parquet_are_read_as_strings(tmp_path):
    v, _ = items_from(tmp_path, {"item_id": [3, 1, 2], "title": ["c", "a", "b"]})
    assert v.table.column("item_id").to_pylist() == ["1", "2", "3"]


def test_directory_and_glob_read_every_file(tmp_path):
    (tmp_path / "d").mkdir()
    write_parquet(tmp_path / "d" / "part-0.parquet", {"item_id": ["a"], "title": ["A"]})
    write_parquet(tmp_path / "d" / "part-1.parquet", {"item_id": ["b"], "title": ["B"]})
    (tmp_path / "d" / "_SUCCESS").write_text("")
    for location in (tmp_path / "d", tmp_path / "d" / "*.parquet"):
        raw = read_table(TableInput(path=str(location)), id_columns=("item_id",))
        assert sorted(raw.column("item_id").to_pylist()) == ["a", "b"]


def test_recbole_atomic_file(tmp_path):
    path = tmp_path / "x.item"
    path.write_text("item_id:token\tmovie_title:token_seq\tclass:token_seq\tzip:token\n1\tToy Story\tAnimation Comedy\t00501\n")
    raw = read_table(TableInput(path=str(path), rename={"movie_title": "title", "class": "categories"}), id_columns=("item_id",))
    v = validate_items(raw, location=str(path), attributes=None, categories_delimiter="|")
    row = v.table.to_pylist()[0]
    assert row["title"] == "Toy Story"
    assert row["categories"] == ["Animation", "Comedy"]
    assert row["attributes"] == ["zip: 00501"]  # leading zeros kept


def test_missing_column_names_file_column_and_hint(tmp_path):
    with pytest.raises(InputDataError) as err:
        items_from(tmp_path, {"item_id": ["1"], "name": ["x"]})
    msg = str(err.value)
    assert "items.parquet" in msg and "column 'title'" in msg and "rename" in msg and "['item_id', 'name']" in msg


def test_wrong_type_names_column_and_example_row(tmp_path):
    with pytest.raises(InputDataError, match=r"column 'item_id', row 1: ids must be strings or integers, found double"):
        items_from(tmp_path, {"item_id": [1.5, 2.0], "title": ["a", "b"]})


def test_duplicate_item_ids_stop_the_run_naming_both_rows(tmp_path):
    with pytest.raises(InputDataError, match=r"'x' appears at row 1 and again at row 3"):
        items_from(tmp_path, {"item_id": ["x", "y", "x"], "title": ["a", "b", "c"]})


def test_bad_item_rows_go_to_rejects_with_source_and_row(tmp_path):
    v, path = items_from(tmp_path, {"item_id": ["a", None, " ", "d"], "title": ["A", "B", "C", None]})
    assert v.table.column("item_id").to_pylist() == ["a"]
    rejects = v.rejects.to_pylist()
    assert [(r["row"], r["reason"].split(":")[0]) for r in rejects] == [(2, "null id"), (3, "null id"), (4, "empty title")]
    assert all(r["source"] == str(path) for r in rejects)
    assert json.loads(rejects[0]["raw"]) == {"item_id": None, "title": "B"}
    assert v.rows_read == 4 == v.table.num_rows + v.rejects.num_rows


def test_interaction_rejects_and_timestamp_forms(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "user_id,item_id,timestamp\n"
        "u1,a,100\n"  # integer seconds
        "u1,a,2020-01-01T00:00:00Z\n"  # ISO-8601
        "u2,zzz,100\n"  # unknown item
        ",a,100\n"  # null user
        "u3,a,yesterday\n"  # unparsable
        "u4,a,\n"  # null timestamp
        "u5,a,12.7\n"  # float seconds, floored
    )
    raw = read_table(TableInput(path=str(path)), id_columns=("user_id", "item_id"))
    v = validate_interactions(raw, location=str(path), item_ids=pa.array(["a"]))
    assert v.table.column("timestamp").to_pylist() == [100, 1577836800, 12]
    reasons = {r["row"]: r["reason"] for r in v.rejects.to_pylist()}
    assert reasons == {
        3: "unknown item: item_id zzz is not in the catalogue",
        4: "null id: user_id is null or empty",
        5: "unparsable timestamp: yesterday is neither seconds nor an ISO-8601 date",
        6: "null timestamp: timestamp is null",
    }


def test_timestamp_of_unusable_type_is_a_schema_error(tmp_path):
    path = write_parquet(tmp_path / "log.parquet", {"user_id": ["u"], "item_id": ["a"], "timestamp": [True]})
    raw = read_table(TableInput(path=str(path)), id_columns=("user_id", "item_id"))
    with pytest.raises(InputDataError, match=r"column 'timestamp', row 1: expected int64 seconds"):
        validate_interactions(raw, location=str(path), item_ids=pa.array(["a"]))


def test_users_duplicates_and_attributes(tmp_path):
    path = write_parquet(tmp_path / "users.parquet", {"user_id": ["u1", "u2"], "age": [30, None]})
    v = validate_users(read_table(TableInput(path=str(path)), id_columns=("user_id",)), location=str(path))
    assert v.table.to_pylist() == [{"user_id": "u1", "attributes": ["age: 30"]}, {"user_id": "u2", "attributes": []}]
    path = write_parquet(tmp_path / "dup.parquet", {"user_id": ["u1", "u1"]})
    with pytest.raises(InputDataError, match="user ids must be unique"):
        validate_users(read_table(TableInput(path=str(path)), id_columns=("user_id",)), location=str(path))


def test_missing_file_is_named():
    with pytest.raises(InputDataError, match="nowhere.parquet: no such file"):
        read_table(TableInput(path="/nowhere.parquet"))


def test_a_list_of_locations_is_read_as_one_table(tmp_path):
    first = write_parquet(tmp_path / "train.parquet", {"user_id": ["u1"], "item_id": ["a"], "timestamp": [1]})
    second = tmp_path / "valid.csv"
    second.write_text("user_id,item_id,timestamp\nu1,b,2\n,c,3\n")
    table = TableInput(path=[str(first), str(second)])
    v = validate_interactions(read_table(table, id_columns=("user_id", "item_id")), location=table.display, item_ids=None)
    assert v.table.column("item_id").to_pylist() == ["a", "b"]
    # A reject names the file and the row within it, not the row in the concatenation.
    [reject] = v.rejects.to_pylist()
    assert reject["source"] == str(second) and reject["row"] == 2
    with pytest.raises(ValueError, match="at least one non-empty location"):
        TableInput(path=[])
