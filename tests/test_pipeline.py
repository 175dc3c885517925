"""The full job on a real local Ray with the tiny BERT: known answers, invariants, publishing."""

import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from chatrec.cli import main
from chatrec.config import load_config
from chatrec.errors import InputDataError, PublishError
from chatrec.publish import read_latest
from chatrec.user_buckets import bucket_of
from pipelines.full_run import run_job
from pipelines import validate_log
from pipelines.stages import histories as histories_stage
from pipelines.stages import read_validate as read_validate_stage
from tests.conftest import make_toy_catalogue, write_parquet


def config(paths, output, model_dir, **extra):
    overrides = {
        "inputs": {"items": str(paths["items"]), "interactions": str(paths["interactions"])},
        "encoder": {"model": str(model_dir), "max_length": 32},
        "retrieval": {"top_k": 3},
        "output": {"path": str(output)},
        # The content path's known answers; the matcher has its own tests below.
        "matcher": {"enabled": False},
    }
    for key, value in extra.items():
        section, name = key.split("__")
        overrides.setdefault(section, {})[name] = value
    return load_config(None, overrides)


def table(run_dir, name):
    return pads.dataset(os.path.join(run_dir, name), format="parquet").to_table()


def recs_by_user(run_dir):
    out = {}
    for r in table(run_dir, "recommendations").sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist():
        out.setdefault(r["user_id"], []).append(r)
    return out


@pytest.fixture(scope="module")
def toy_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("toy")
    paths = make_toy_catalogue(base)
    result = run_job(config(paths, base / "out", tiny_model_dir, output__run_id="first"))
    return paths, base, result


def test_known_answers(toy_run):
    _, _, result = toy_run
    recs = recs_by_user(result.run_dir)
    # Identical texts give identical vectors: the twin of what you saw comes first.
    assert recs["u1"][0]["item_id"] == "a2" and recs["u1"][0]["because_item_id"] == "a1"
    assert recs["u1"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert recs["u2"][0]["item_id"] == "b2" and recs["u2"][0]["because_item_id"] == "b1"
    assert "both romance" in recs["u2"][0]["reason"]


def test_seen_items_excluded_and_exactly_k_rows(toy_run):
    _, _, result = toy_run
    seen = {"u1": {"a1"}, "u2": {"b1"}, "u3": {"c1", "c2"}, "u4": {"d1", "a1"}}
    recs = recs_by_user(result.run_dir)
    assert set(recs) == set(seen)
    for user, rows in recs.items():
        assert [r["rank"] for r in rows] == [1, 2, 3]
        assert not {r["item_id"] for r in rows} & seen[user]
        assert all(r["strategy"] == "content" and r["run_id"] == "first" for r in rows)
        assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        assert all(r["because_item_id"] in seen[user] for r in rows)


def test_manifest_counts_equal_rows_written_and_latest_commits(toy_run):
    _, base, result = toy_run
    run_dir = result.run_dir
    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    for name in ("recommendations", "item_embeddings", "user_embeddings", "rejects"):
        assert manifest["outputs"][name] == table(run_dir, name).num_rows
    assert manifest["outputs"]["recommendations"] == 4 * 3
    assert manifest["outputs"]["item_embeddings"] == 8
    assert manifest["users"] == {"covered": 4, "with_history": 4, "popularity_fallback": 0}
    assert [s["name"] for s in manifest["stages"]][:3] == ["read+validate", "item-text", "embed-items"]
    assert read_latest(str(base / "out")) == str(base / "out") + "/runs/first"
    assert not os.listdir(base / "out" / ".staging")  # staging moved, nothing left behind
    assert not os.path.exists(os.path.join(run_dir, "_work"))
    emb = table(run_dir, "item_embeddings")
    assert emb.schema.field("embedding").type.list_size == 32
    assert set(emb.column("model_fingerprint").to_pylist()) == {manifest["model"]["fingerprint"]}


def test_same_inputs_same_output(toy_run, tiny_model_dir):
    paths, base, result = toy_run
    again = run_job(config(paths, base / "out2", tiny_model_dir, output__run_id="first"))
    key = [("user_id", "ascending"), ("rank", "ascending")]
    assert table(again.run_dir, "recommendations").sort_by(key).equals(table(result.run_dir, "recommendations").sort_by(key))


def test_published_run_is_never_overwritten(toy_run, tiny_model_dir):
    paths, base, result = toy_run
    before = table(result.run_dir, "recommendations")
    with pytest.raises(PublishError, match="already published"):
        run_job(config(paths, base / "out", tiny_model_dir, output__run_id="first"))
    assert table(result.run_dir, "recommendations").equals(before)


def test_schema_error_publishes_nothing(ray_cluster, tiny_model_dir, tmp_path):
    paths = make_toy_catalogue(tmp_path)
    write_parquet(paths["items"], {"item_id": ["x", "x"], "title": ["a", "b"]})
    with pytest.raises(InputDataError, match="appears at row 1 and again at row 2"):
        run_job(config(paths, tmp_path / "out", tiny_model_dir))
    assert read_latest(str(tmp_path / "out")) is None
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("on_cluster", [False, "log"], ids=["in-driver", "on-cluster"])
def test_rejects_and_popularity_fallback(ray_cluster, tiny_model_dir, tmp_path, monkeypatch, on_cluster):
    # The path of a big log: validated by Ray tasks in chunks of two row groups (one row each),
    # its histories built by the shuffle by bucket on Ray, into 4 buckets.
    if on_cluster:
        monkeypatch.setattr(histories_stage, "IN_DRIVER_BELOW", 0)
        monkeypatch.setattr(histories_stage, "bucket_count", lambda rows: 4)
        monkeypatch.setattr(read_validate_stage, "LOG_IN_DRIVER_BELOW", 0)
        monkeypatch.setattr(validate_log, "ROWS_PER_CHUNK", 2)
    paths = make_toy_catalogue(tmp_path)
    log = [
        {"user_id": "u1", "item_id": "a1", "timestamp": "100"},
        {"user_id": "u2", "item_id": "a1", "timestamp": "100"},
        {"user_id": "u2", "item_id": "b1", "timestamp": "not a time"},
        {"user_id": "u9", "item_id": "nope", "timestamp": "100"},  # only row unknown -> fallback
        {"user_id": None, "item_id": "a1", "timestamp": "100"},
    ]
    pq.write_table(pa.Table.from_pylist(log), paths["interactions"], row_group_size=1)
    users = write_parquet(tmp_path / "users.parquet", {"user_id": ["u1", "u10"], "age": [30, 40]})
    cfg = config(paths, tmp_path / "out", tiny_model_dir)
    cfg = load_config(None, {**cfg.to_dict(), "inputs": {**cfg.to_dict()["inputs"], "users": {"path": str(users)}}})
    result = run_job(cfg)
    rejects = table(result.run_dir, "rejects").to_pylist()
    assert sorted((r["row"], r["reason"].split(":")[0]) for r in rejects) == [
        (3, "unparsable timestamp"), (4, "unknown item"), (5, "null id")
    ]
    assert all(r["source"] == str(paths["interactions"]) for r in rejects)
    recs = recs_by_user(result.run_dir)
    assert set(recs) == {"u1", "u2", "u9", "u10"}
    for user in ("u9", "u10"):
        assert [r["item_id"] for r in recs[user]][0] == "a1"  # the most popular item
        assert all(r["strategy"] == "popularity" and r["because_item_id"] is None for r in recs[user])
        assert len(recs[user]) == 3
    m = result.manifest
    assert m["rejects"]["total"] == 3 == m["outputs"]["rejects"]
    assert m["rejects"]["by_reason"] == {"null id": 1, "unknown item": 1, "unparsable timestamp": 1}
    assert m["users"] == {"covered": 4, "with_history": 2, "popularity_fallback": 2}
    # Partitioned by user bucket, as the manifest says: each user's rows in its bucket's directory.
    buckets = m["partitioning"]["recommendations"]["buckets"]
    assert buckets == (4 if on_cluster else 1) and m["partitioning"]["recommendations"]["column"] == "bucket"
    assert [s["name"] for s in m["stages"]].count("validate-log") == bool(on_cluster)
    assert m["inputs"]["interactions"] == {"rows": 5, "valid": 2}
    assert m["rejects"]["by_source"]["interactions"] == 3
    assert m["new_item_slots"]["new_items"] == 7  # of the 8 items only a1 has a valid interaction
    # Every valid interaction in one second: no time to estimate new-item demand from.
    assert m["new_item_slots"]["demand"] == {"window_start": None, "window_interactions": 0, "to_new_items": 0,
                                             "new_items": 0, "share": 0.0, "window": 0.1}
    assert m["new_item_slots"]["slots"] == 0 and "single day" in m["new_item_slots"]["why"]
    by_dir = pads.dataset(os.path.join(result.run_dir, "recommendations"), format="parquet", partitioning="hive")
    rows = by_dir.to_table(columns=["user_id", "bucket"]).to_pylist()
    assert len(rows) == m["outputs"]["recommendations"]
    assert all(r["bucket"] == bucket_of(r["user_id"], buckets) for r in rows)


def test_cli_run_on_hand_written_tables(ray_cluster, tiny_model_dir, tmp_path, capsys):
    paths = make_toy_catalogue(tmp_path)
    code = main([
        "run", "--items", str(paths["items"]), "--interactions", str(paths["interactions"]),
        "--output", str(tmp_path / "out"), "--top-k", "2", "--model", str(tiny_model_dir), "--json",
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["outputs"]["recommendations"] == 4 * 2
    assert os.path.isdir(summary["run_dir"])


def test_cli_errors_become_messages_and_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {items: a, interactions: b}\nretreival: {}\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "unknown key 'retreival'" in capsys.readouterr().err


def test_the_matcher_trains_and_scores_inside_the_job(ray_cluster, tiny_model_dir, tmp_path):
    paths = make_toy_catalogue(tmp_path)
    items = ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "e1"]
    rows, t = [], 0
    for u in range(16):  # each user walks through a few items, in a user-specific order
        for item in [items[(u + k * 3) % len(items)] for k in range(5)]:
            rows.append({"user_id": f"u{u:02d}", "item_id": item, "timestamp": t})
            t += 1
    paths["interactions"] = write_parquet(tmp_path / "log.parquet", rows)
    # Profiles for 12 of the 16 users, in 3 distinct texts: the user tower's profile token.
    paths["users"] = write_parquet(tmp_path / "users.parquet", {
        "user_id": [f"u{u:02d}" for u in range(12)], "colour": [["red", "blue", "green"][u % 3] for u in range(12)]})
    cfg = config(paths, tmp_path / "out", tiny_model_dir, output__run_id="m1", matcher__enabled=True,
                 matcher__max_epochs=2, matcher__dim=16, matcher__batch_size=32,
                 inputs__users=str(paths["users"]))
    result = run_job(cfg)
    manifest = json.loads(open(os.path.join(result.run_dir, "manifest.json")).read())
    assert manifest["matcher"]["epochs_run"] == 2 and manifest["matcher"]["validation"]["users"] == 16
    assert manifest["matcher"]["params"]["profile"] is True
    assert manifest["matcher"]["profiles"] == {"users": 12, "texts": 3, "embedded": 3, "reused": 0}
    assert 0.0 <= manifest["matcher"]["fusion"]["weight"] <= 1.0
    recs = recs_by_user(result.run_dir)
    seen = {}
    for r in rows:
        seen.setdefault(r["user_id"], set()).add(r["item_id"])
    assert all(len(v) == 3 for v in recs.values())  # 8 items, 5 seen: exactly 3 left
    assert all(r["item_id"] not in seen[u] and r["because_item_id"] in seen[u] for u, v in recs.items() for r in v)
    assert {r["strategy"] for v in recs.values() for r in v} <= {"two-tower", "collaborative"}
    # The user embeddings live in the matcher's space; its best weights ship with the run.
    assert table(result.run_dir, "user_embeddings").schema.field("embedding").type.list_size == 16
    import torch

    state = torch.load(os.path.join(result.run_dir, "matcher", "model.pt"), weights_only=True)
    assert state["item_ids.weight"].shape == (8, 16) and state["profile_projection.weight"].shape == (16, 32)
    assert not os.path.exists(tmp_path / "out" / ".matcher-checkpoints" / "m1")

    # The nightly refresh reuses this matcher (the log did not grow): one item's text edited,
    # one item added. Items both catalogues share keep their id vectors; the new one has none.
    import pyarrow.parquet as pq

    catalogue = pq.read_table(paths["items"]).to_pylist()
    catalogue[7]["description"] = "red space ship night"  # e1
    catalogue.append({**catalogue[0], "item_id": "f1", "title": "zeta drama"})
    write_parquet(tmp_path / "items2.parquet", catalogue)
    # One place per list kept for items without interactions: f1.
    refreshed = run_job(config({**paths, "items": tmp_path / "items2.parquet"}, tmp_path / "out", tiny_model_dir,
                               output__run_id="m2", matcher__enabled=True, matcher__max_epochs=2,
                               matcher__dim=16, matcher__batch_size=32, inputs__users=str(paths["users"]),
                               retrieval__new_item_slots=1), refresh=True)
    m = refreshed.manifest
    assert m["refresh"]["matcher"] == {"retrained": False, "reused_from": "m1", "policy": "log-growth"}
    assert m["matcher"]["profiles"] == {"users": 12, "texts": 3, "embedded": 0, "reused": 3}  # the cache's
    new_recs = recs_by_user(refreshed.run_dir)
    assert all([r["item_id"] for r in v].count("f1") == 1 for v in new_recs.values())
    slotted = [r for v in new_recs.values() for r in v if r["strategy"] == "new-item"]
    assert all(r["item_id"] == "f1" and r["rank"] == 3 for r in slotted)
    assert m["new_item_slots"] == {"slots": 1, "new_items": 1, "rows": len(slotted), "why": "set in the configuration",
                                   "demand": None}
    assert m["matcher"]["trained_in_run"] == "m1" and m["refresh"]["items"]["embedded"] == 2
    remapped = torch.load(os.path.join(refreshed.run_dir, "matcher", "model.pt"), weights_only=True)
    assert remapped["item_ids.weight"].shape == (9, 16)
    assert remapped["has_id"].tolist() == state["has_id"].tolist()[:8] + [False]  # f1 sorts last
    before, after = (
        dict(zip(t.column("item_id").to_pylist(), t.column("embedding").to_pylist()))
        for t in (pq.read_table(os.path.join(d, "matcher", "item_vectors.parquet"))
                  for d in (result.run_dir, refreshed.run_dir))
    )
    import numpy as np

    assert all(np.allclose(after[i], before[i], atol=1e-6) for i in items if i != "e1")
    assert not np.allclose(after["e1"], before["e1"], atol=1e-3)
    # Users whose recent items kept their texts keep their vectors.
    assert m["refresh"]["users"]["reused"] == sum(1 for u in seen if "e1" not in seen[u]) > 0


def test_chatrec_train_publishes_a_matcher_that_runs_score_with(ray_cluster, tiny_model_dir, tmp_path, capsys):
    paths = make_toy_catalogue(tmp_path)
    items = ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "e1"]
    rows = [{"user_id": f"u{u:02d}", "item_id": items[(u + k) % 8], "timestamp": 10 * u + k}
            for u in range(12) for k in range(4)]
    paths["interactions"] = write_parquet(tmp_path / "log.parquet", rows)
    # Trained with the encoder's top layer finetuned: scoring with it must apply that layer.
    matcher = {"enabled": True, "max_epochs": 1, "dim": 16, "batch_size": 32, "text_encoder": "finetune",
               "encoder_lr": 1e-3}
    config_file = tmp_path / "train.yaml"
    config_file.write_text(json.dumps({
        "inputs": {"items": str(paths["items"]), "interactions": str(paths["interactions"])},
        "encoder": {"model": str(tiny_model_dir), "max_length": 32}, "matcher": matcher,
        "retrieval": {"top_k": 3}, "output": {"path": str(tmp_path / "out")},
    }))
    assert main(["train", "--config", str(config_file), "--run-id", "weekly", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["run_dir"] == str(tmp_path / "out" / "matchers" / "runs" / "weekly")
    assert summary["matcher"]["epochs_run"] == 1
    manifest = json.loads(open(os.path.join(summary["run_dir"], "manifest.json")).read())
    assert manifest["matcher"]["params"]["text_encoder"] == {"mode": "finetune", "layers": 1, "lr": 1e-3}
    assert sorted(os.listdir(summary["run_dir"])) == ["item_embeddings", "manifest.json", "matcher", "rejects"]
    import torch

    state = torch.load(os.path.join(summary["run_dir"], "matcher", "model.pt"), weights_only=True)
    assert any(k.startswith("text_top.layers.0.") for k in state)
    assert not (tmp_path / "out" / "LATEST").exists()  # serving's LATEST is not a training run's

    result = run_job(config(paths, tmp_path / "out", tiny_model_dir, output__run_id="scored", matcher__enabled=True,
                            matcher__from_run=str(tmp_path / "out" / "matchers"), matcher__dim=16,
                            matcher__max_epochs=1, matcher__batch_size=32))
    assert result.manifest["matcher"]["trained_in_run"] == "weekly"
    stages = [s["name"] for s in result.manifest["stages"]]
    assert "fusion" not in stages and "token-states" in stages  # nothing was trained here; the top was applied
    assert len(recs_by_user(result.run_dir)) == 12
    # The same catalogue through the saved towers and finetuned top: the same item vectors.
    import numpy as np
    import pyarrow.parquet as pq

    trained, scored = (pq.read_table(os.path.join(d, "matcher", "item_vectors.parquet"))
                       for d in (summary["run_dir"], result.run_dir))
    assert trained.column("item_id").to_pylist() == scored.column("item_id").to_pylist()
    assert np.allclose(np.array(trained.column("embedding").to_pylist()),
                       np.array(scored.column("embedding").to_pylist()), atol=1e-5)
