"""Property-based fuzzing of the readers, the validators and the config loader (Hypothesis).

The property, for every generated input: reading and validating it either raises
InputDataError naming the file (ConfigError for a config), or returns valid rows plus
rejects that add up to the rows read, each reject naming its file and a distinct row of
it. No other exception, no row dropped without a reject, nothing written beside the input.

Profiles (tests/conftest.py): `ci` (the default: a bounded number of examples per property,
derandomized, so a run is reproducible) and `long` (`make fuzz`: many more, random, and
failures saved to tests/fuzz-examples/, which the `ci` profile replays).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from chatrec import schemas
from chatrec.config import TableInput, load_config
from chatrec.errors import ConfigError, InputDataError
from chatrec.histories import build_histories
from chatrec.item_text import render_item_text
from chatrec.readers import read_table
from chatrec.validation import (
    validate_feedback,
    validate_interactions,
    validate_items,
    validate_users,
)
from tests.input_strategies import configs, csv_bytes, tables, write_table

ITEMS = {"item_id": "id", "title": "text"}
ITEMS_OPTIONAL = {"year": "any", "categories": "any", "description": "any"}
LOG = {"user_id": "id", "item_id": "id", "timestamp": "timestamp"}
CATALOGUE = pa.array(["a", "A", "b", "0", "007", "7", "a/b", "../x", "\u00e9"])


def _validators():
    return {
        "items": (ITEMS, ITEMS_OPTIONAL, ("item_id",),
                  lambda raw, where: validate_items(raw, location=where, attributes=None, categories_delimiter="|")),
        "interactions": (LOG, {}, ("user_id", "item_id"),
                         lambda raw, where: validate_interactions(raw, location=where, item_ids=CATALOGUE)),
        "users": ({"user_id": "id"}, {}, ("user_id",), lambda raw, where: validate_users(raw, location=where)),
        "feedback": ({**LOG, "event": "text"}, {}, ("user_id", "item_id"),
                     lambda raw, where: validate_feedback(raw, location=where, item_ids=CATALOGUE)),
    }


VALIDATORS = _validators()


def holds(path: Path, kind: str, rows_in_file: int | None) -> None:
    """The property, for one input file of one kind."""
    _, _, id_columns, validate = VALIDATORS[kind]
    before = sorted(p.name for p in path.parent.iterdir())
    try:
        raw = read_table(TableInput(path=str(path)), id_columns=id_columns)
        validated = validate(raw, str(path))
    except InputDataError as e:
        assert e.source is not None and str(path) in str(e), f"the error does not name the file: {e}"
        if e.row is not None:
            assert e.row >= 1
        return
    finally:
        assert sorted(p.name for p in path.parent.iterdir()) == before, "a file was written beside the input"
    if rows_in_file is not None:
        assert validated.rows_read == rows_in_file
    assert validated.table.num_rows + validated.rejects.num_rows == validated.rows_read, "rows dropped silently"
    rejects = validated.rejects
    assert rejects.schema.equals(schemas.REJECTS)
    rows = rejects.column("row").to_pylist()
    assert len(set(rows)) == len(rows) and all(1 <= r <= validated.rows_read for r in rows)
    assert set(rejects.column("source").to_pylist()) <= {str(path)}
    assert all(":" in reason for reason in rejects.column("reason").to_pylist())
    contract = {"items": schemas.ITEMS, "users": schemas.USERS, "feedback": schemas.FEEDBACK,
                "interactions": schemas.INTERACTIONS}[kind]
    assert validated.table.schema.equals(contract)
    if kind == "items" and validated.table.num_rows:
        texts = render_item_text(validated.table, None)  # every valid item renders
        assert texts.num_rows == validated.table.num_rows


@pytest.fixture
def scratch():
    # Hypothesis runs many examples per test: a directory of their own for each.
    def make() -> Path:
        return Path(tempfile.mkdtemp(prefix="chatrec-fuzz-"))
    made: list[Path] = []
    yield lambda: made.append(make()) or made[-1]
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(VALIDATORS))
@given(data=st.data())
def test_any_table_is_read_or_refused_with_its_file_named(kind, data, scratch):
    required, optional, _, _ = VALIDATORS[kind]
    table = data.draw(tables(required, optional), label="table")
    fmt = data.draw(st.sampled_from(["parquet", "csv"]), label="format")
    path = write_table(table, scratch(), fmt)
    if path is None:  # CSV cannot carry this table's types
        path = write_table(table, scratch(), "parquet")
    holds(path, kind, table.num_rows)


@pytest.mark.parametrize("kind", sorted(VALIDATORS))
@given(data=st.data())
def test_any_csv_bytes_are_read_or_refused_with_their_file_named(kind, data, scratch):
    required = list(VALIDATORS[kind][0])
    path = scratch() / "input.csv"
    path.write_bytes(data.draw(csv_bytes(required), label="csv"))
    holds(path, kind, None)


@given(config=configs())
def test_any_config_file_loads_or_is_refused_as_a_config_error(config, scratch):
    path = scratch() / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(e)
        return
    assert cfg.sha256()  # a config that loads is complete and serialisable


@given(text=st.text(max_size=200))
def test_any_yaml_text_loads_or_is_refused_as_a_config_error(text, scratch):
    path = scratch() / "config.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError:
        pass


def test_a_million_interactions_of_one_user_are_validated_and_become_one_history():
    n = 1_000_000
    raw = pa.table({"user_id": pa.array(["u"] * n), "item_id": pa.array(["a", "b"] * (n // 2)),
                    "timestamp": pa.array(range(n), pa.int64()),
                    "__source": pa.array(["log"] * n), "__row": pa.array(range(1, n + 1), pa.int64())})
    validated = validate_interactions(raw, location="log", item_ids=pa.array(["a", "b"]))
    assert validated.table.num_rows == n and validated.rejects.num_rows == 0
    texts = pl.DataFrame({"item_id": ["a", "b"], "row": [0, 1], "text": ["x", "y"], "text_sha256": ["1", "2"]})
    population = build_histories(validated.table, texts.to_arrow().cast(schemas.ITEM_TEXT), max_items=50)
    histories = population.histories
    assert histories.num_rows == 1
    assert histories.column("user_id").to_pylist() == ["u"]


# Inputs `make fuzz` found, kept as plain tests.

def test_a_binary_attribute_is_text_when_utf8_and_an_error_naming_its_row_when_not(tmp_path):
    from tests.conftest import write_parquet

    good = write_parquet(tmp_path / "good.parquet", {"user_id": ["a", "b"], "rating": pa.array([b"4", None])})
    holds(good, "users", 2)
    bad = write_parquet(tmp_path / "bad.parquet", {"user_id": ["a", "b"], "rating": pa.array([b"4", b"\x80"])})
    with pytest.raises(InputDataError, match=r"column 'rating', row 2: expected text, found bytes that are not UTF-8"):
        validate_users(read_table(TableInput(path=str(bad)), id_columns=("user_id",)), location=str(bad))


def test_a_csv_whose_header_is_not_utf8_is_refused_naming_the_file(tmp_path):
    for raw in (b"\n\x80\n", b"\x80\n1\n", b"user_id\n\x80\n"):
        path = tmp_path / "users.csv"
        path.write_bytes(raw)
        holds(path, "users", None)


@given(data=st.data())
def test_any_log_validated_on_the_cluster_in_chunks_is_what_the_driver_makes_of_it(data, scratch, ray_cluster):
    """The property for the path of a big log (pipelines.validate_log): chunks of row groups
    validated by Ray tasks give the driver's valid rows and rejects, or refuse the file the
    driver refuses (a file that breaks the contract in several ways may be refused for another
    of them: the headers are checked before any row is read)."""
    from pipelines.validate_log import plan_log, validate_log_on_cluster

    table = data.draw(tables(LOG), label="table")
    directory = scratch()
    path = directory / "input.parquet"
    pq.write_table(table, path, row_group_size=data.draw(st.integers(1, 8), label="row_group_size"))
    source = TableInput(path=str(path))
    try:
        driver = validate_interactions(read_table(source, id_columns=("user_id", "item_id")), location=str(path),
                                       item_ids=CATALOGUE)
    except InputDataError as e:
        driver = e
    out = {k: str(directory / "out" / k) for k in ("valid", "rejects", "users")}
    try:
        plan = plan_log(source, data.draw(st.integers(1, 10), label="rows_per_chunk"))
        cluster = validate_log_on_cluster(plan, table=source, item_ids=CATALOGUE, valid_path=out["valid"],
                                          rejects_path=out["rejects"], users_path=out["users"])
    except InputDataError as e:
        cluster = e
    if isinstance(driver, InputDataError):
        assert isinstance(cluster, InputDataError), f"the driver refused the log ({driver}), the cluster did not"
        assert cluster.source == driver.source
        return
    assert not isinstance(cluster, InputDataError), f"the cluster refused a log the driver took: {cluster}"
    assert (cluster.rows_read, cluster.valid, cluster.rejected) == (
        driver.rows_read, driver.table.num_rows, driver.rejects.num_rows)
    read = lambda k, schema: (pads.dataset(out[k], format="parquet").to_table().cast(schema)  # noqa: E731
                              if Path(out[k]).exists() else schema.empty_table())
    by = [(c, "ascending") for c in schemas.INTERACTIONS.names]
    assert read("valid", schemas.INTERACTIONS).sort_by(by).equals(driver.table.sort_by(by))
    assert read("rejects", schemas.REJECTS).sort_by("row").equals(driver.rejects.sort_by("row"))
