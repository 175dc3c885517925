"""`chatrec evaluate` on published runs: files written, A/B, and every bad input's message."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from chatrec import schemas
from chatrec.cli import main
from chatrec.publish import RunOutput
from tests.conftest import write_parquet


def publish_run(root: Path, run_id: str, lists: dict[str, list[str]], train: Path, name: str | None = None) -> Path:
    """A published run with the given top-K lists, made with the same publisher as a real run."""
    rows = [
        {"user_id": u, "rank": r + 1, "item_id": i, "score": 1.0 - r / 10, "because_item_id": None,
         "reason": "test", "strategy": "test", "run_id": run_id}
        for u, items in lists.items() for r, i in enumerate(items)
    ]
    out = RunOutput(str(root), run_id)
    out.prepare()
    out.write_table("recommendations", pa.Table.from_pylist(rows, schema=schemas.RECOMMENDATIONS))
    manifest = {"run_id": run_id, "config": {"inputs": {"interactions": {"path": str(train)}}}}
    if name:
        manifest["baseline"] = {"name": name}
    out.write_json("manifest.json", manifest)
    out.commit()
    return root


@pytest.fixture
def logs(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", {
        "user_id": ["u1", "u2", "u3", "u3"], "item_id": ["a", "b", "a", "b"], "timestamp": [1, 1, 1, 2]})
    test = write_parquet(tmp_path / "test.parquet", {
        "user_id": ["u1", "u2", "u3", "ghost"], "item_id": ["b", "c", "c", "a"], "timestamp": [5, 5, 5, 5]})
    return train, test


def test_evaluate_writes_json_and_html_into_each_run(tmp_path, logs, capsys):
    train, test = logs
    good = publish_run(tmp_path / "good", "r1", {"u1": ["b", "c"], "u2": ["c", "a"], "u3": ["c", "d"]}, train, "good")
    bad = publish_run(tmp_path / "bad", "r2", {"u1": ["c", "d"], "u2": ["a", "c"], "u3": ["d", "e"]}, train)
    report = tmp_path / "report" / "all.html"
    code = main(["evaluate", "--run", str(good), str(bad), "--test", str(test), "--k", "1,2", "--report", str(report)])
    assert code == 0
    evaluation = json.loads((good / "runs" / "r1" / "evaluation.json").read_text())
    # Every known test user is hit at rank 1; the unknown "ghost" has no recommendations: 3 of 4.
    assert evaluation["metrics"]["hit@1"] == pytest.approx(3 / 4)
    assert evaluation["counts"]["test_users_unknown"] == 1
    # Without K = 10 the primary metric is NDCG at the middle cut-off.
    assert evaluation["primary_metric"] == "ndcg@2" and evaluation["primary"] == pytest.approx(0.75)
    assert json.loads((bad / "runs" / "r2" / "evaluation.json").read_text())["metrics"]["hit@2"] == pytest.approx(1 / 4)
    assert (bad / "runs" / "r2" / "evaluation.html").read_text().startswith("<!doctype html>")
    assert "good" in report.read_text() and "chatrec" in report.read_text()
    assert "good" in capsys.readouterr().out


def test_compare_writes_the_paired_deltas(tmp_path, logs):
    train, test = logs
    a = publish_run(tmp_path / "a", "ra", {"u1": ["c"], "u2": ["a"], "u3": ["d"]}, train)
    b = publish_run(tmp_path / "b", "rb", {"u1": ["b"], "u2": ["c"], "u3": ["c"]}, train)
    assert main(["evaluate", "--compare", str(a), str(b), "--test", str(test), "--k", "1", "--bootstrap", "200"]) == 0
    result = json.loads((b / "runs" / "rb" / "compare-ra.json").read_text())
    recall = next(d for d in result["deltas"] if d["metric"] == "recall@1")
    assert recall["a"] == 0 and recall["b"] == pytest.approx(3 / 4) and recall["users"] == 4
    assert (b / "runs" / "rb" / "compare-ra.html").exists()


def test_bad_inputs_give_clear_messages(tmp_path, logs, capsys):
    train, test = logs
    assert main(["evaluate", "--run", str(tmp_path), "--test", str(test)]) == 3
    assert "neither LATEST" in capsys.readouterr().err
    empty = publish_run(tmp_path / "empty", "r0", {}, train)
    assert main(["evaluate", "--run", str(empty), "--test", str(test)]) == 3
    assert "has no recommendations to evaluate" in capsys.readouterr().err
    numeric = write_parquet(tmp_path / "numeric.parquet", {"user_id": [1, 2], "item_id": [7, 8], "timestamp": [1, 2]})
    good = publish_run(tmp_path / "good", "r1", {"u1": ["b"]}, train)
    assert main(["evaluate", "--run", str(good), "--test", str(numeric)]) == 3
    assert "no test user appears in run r1" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(good), "--test", str(test), "--k", "0,x"]) == 2
    assert "--k must be comma-separated positive integers" in capsys.readouterr().err
