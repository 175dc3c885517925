"""The feedback log: validation and rejects, clicks merged as interactions, dismissals (and
ignored impressions) excluded within the window and not after, and the read path."""

import json

import pyarrow as pa
import pytest

from chatrec import schemas
from chatrec.config import FeedbackConfig, load_config
from chatrec.feedback import SECONDS_PER_DAY, merge_feedback
from chatrec.validation import validate_feedback
from pipelines.ingest import read_inputs
from tests.conftest import make_toy_catalogue, write_parquet

T = 100 * SECONDS_PER_DAY  # the newest timestamp: the reference time
LOG = pa.table({"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [T - 500, T - 400]}).cast(
    schemas.INTERACTIONS)


def feedback(rows):
    return pa.Table.from_pylist([dict(zip(("user_id", "item_id", "timestamp", "event"), r)) for r in rows],
                                schema=schemas.FEEDBACK)


def raw(rows):
    table = pa.Table.from_pylist([dict(zip(("user_id", "item_id", "timestamp", "event"), r)) for r in rows])
    return table.append_column(schemas.SOURCE_COL, pa.array(["fb.csv"] * len(rows))).append_column(
        schemas.ROW_COL, pa.array(range(1, len(rows) + 1), pa.int64()))


def test_bad_rows_are_rejected_with_their_reason_and_events_are_normalised():
    rows = [
        ("u1", "a", "100", " Click "),
        ("u1", "a", "100", "purchase"),
        ("u1", "a", "100", None),
        ("u1", "zz", "100", "click"),
        (None, "a", "100", "dismiss"),
        ("u1", "a", "yesterday", "impression"),
    ]
    result = validate_feedback(raw(rows), location="fb.csv", item_ids=pa.array(["a", "b"]))
    assert result.table.to_pylist() == [{"user_id": "u1", "item_id": "a", "timestamp": 100, "event": "click"}]
    assert result.rows_read == 6
    rejects = {r["row"]: r["reason"] for r in result.rejects.to_pylist()}
    assert rejects == {
        2: "unknown event: purchase is not one of impression, click, dismiss",
        3: "null event: event is null or empty",
        4: "unknown item: item_id zz is not in the catalogue",
        5: "null id: user_id is null or empty",
        6: "unparsable timestamp: yesterday is neither seconds nor an ISO-8601 date",
    }
    assert json.loads(result.rejects.to_pylist()[0]["raw"])["event"] == "purchase"
    assert {r["source"] for r in result.rejects.to_pylist()} == {"fb.csv"}


def test_clicks_become_interactions_once():
    merged = merge_feedback(LOG, feedback([
        ("u1", "c", T - 100, "click"),
        ("u1", "c", T - 100, "click"),  # the same event twice
        ("u2", "b", T - 400, "click"),  # already in the log
    ]), FeedbackConfig())
    rows = sorted((r["user_id"], r["item_id"], r["timestamp"]) for r in merged.interactions.to_pylist())
    assert rows == [("u1", "a", T - 500), ("u1", "c", T - 100), ("u2", "b", T - 400)]
    assert merged.manifest["clicks_merged"] == 1 and merged.manifest["clicks_already_in_log"] == 1
    assert merged.manifest["by_event"] == {"click": 3, "dismiss": 0, "impression": 0}
    assert merged.exclusions.num_rows == 0


def test_dismissals_are_excluded_within_the_window_and_not_after():
    days = 30
    merged = merge_feedback(LOG, feedback([
        ("u1", "b", T - days * SECONDS_PER_DAY, "dismiss"),  # exactly at the window's start: active
        ("u1", "c", T - days * SECONDS_PER_DAY - 1, "dismiss"),  # one second older: expired
        ("u2", "a", T, "dismiss"),
        ("u9", "a", T - 10, "dismiss"),  # a user with no interaction at all
    ]), FeedbackConfig(dismiss_days=days))
    assert merged.manifest["reference_time"] == T
    assert sorted(map(tuple, (r.values() for r in merged.exclusions.to_pylist()))) == [
        ("u1", "b"), ("u2", "a"), ("u9", "a")]
    m = merged.manifest
    assert (m["dismissals_active"], m["dismissals_expired"], m["exclusions_without_history"]) == (3, 1, 1)
    assert merged.interactions.num_rows == LOG.num_rows  # a dismissal is not history


def test_ignored_impressions_exclude_only_when_configured():
    events = feedback([("u1", "x", T - 10 * i, "impression") for i in range(3)]  # shown 3x, never clicked
                      + [("u1", "y", T - 10 * i, "impression") for i in range(3)] + [("u1", "y", T, "click")]
                      + [("u1", "z", T - 10 * i, "impression") for i in range(2)]
                      + [("u1", "w", T - 40 * SECONDS_PER_DAY, "impression") for _ in range(3)])  # too old
    off = merge_feedback(LOG, events, FeedbackConfig())
    assert off.exclusions.num_rows == 0 and off.manifest["by_event"]["impression"] == 11
    on = merge_feedback(LOG, events, FeedbackConfig(ignored_impressions=3))
    assert on.exclusions.to_pylist() == [{"user_id": "u1", "item_id": "x"}]
    assert on.manifest["ignored_impression_exclusions"] == 1


def test_read_path_merges_feedback_and_keeps_its_rejects(tmp_path):
    paths = make_toy_catalogue(tmp_path)
    fb = write_parquet(tmp_path / "feedback.parquet", [
        {"user_id": "u1", "item_id": "b1", "timestamp": 300, "event": "click"},
        {"user_id": "u2", "item_id": "a2", "timestamp": 300, "event": "dismiss"},
        {"user_id": "u2", "item_id": "a2", "timestamp": 300, "event": "share"},
    ])
    cfg = load_config(None, {"inputs": {"items": str(paths["items"]), "interactions": str(paths["interactions"]),
                                        "feedback": str(fb)}})
    inputs = read_inputs(cfg.inputs, cfg.item_text, cfg.feedback)
    log = {(r["user_id"], r["item_id"]) for r in inputs.interactions.table.to_pylist()}
    assert ("u1", "b1") in log and inputs.interactions.rows_read == 6
    assert inputs.exclusions.to_pylist() == [{"user_id": "u2", "item_id": "a2"}]
    assert inputs.reject_counts()["feedback"] == 1
    assert [r["reason"].split(":")[0] for r in inputs.rejects().to_pylist()] == ["unknown event"]
    manifest = inputs.feedback_manifest()
    assert manifest["rows"] == 3 and manifest["rows_valid"] == 2 and manifest["clicks_merged"] == 1


@pytest.mark.parametrize("missing", ["event", "timestamp"])
def test_a_feedback_table_without_a_required_column_stops_the_run(missing):
    from chatrec.errors import InputDataError

    table = raw([("u1", "a", "100", "click")]).drop_columns([missing])
    with pytest.raises(InputDataError, match=f"feedback table has no '{missing}' column"):
        validate_feedback(table, location="fb.csv", item_ids=pa.array(["a"]))
