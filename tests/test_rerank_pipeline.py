"""The full job with a feedback log and the rerank stage on (tiny BERT encoder, tiny random
causal LM): dismissals reach the top-K exclusions, the rerank stage's outputs and manifest."""

import json
import os

import pyarrow.dataset as pads
import pyarrow.parquet as pq

from chatrec import schemas
from chatrec.config import load_config
from chatrec.feedback import SECONDS_PER_DAY
from chatrec.rerank.tiny_lm import write_tiny_causal_lm
from pipelines.full_run import run_job
from tests.conftest import make_toy_catalogue, write_parquet

T = 100 * SECONDS_PER_DAY


def test_full_run_with_feedback_and_rerank(ray_cluster, tiny_model_dir, tmp_path):
    paths = make_toy_catalogue(tmp_path)
    fb = write_parquet(tmp_path / "feedback.parquet", [
        {"user_id": "u1", "item_id": "a2", "timestamp": T, "event": "dismiss"},  # a2 is u1's twin: left out
        {"user_id": "u2", "item_id": "b2", "timestamp": T - 31 * SECONDS_PER_DAY, "event": "dismiss"},  # expired
        {"user_id": "u4", "item_id": "e1", "timestamp": T - 5, "event": "click"},
    ])
    lm = write_tiny_causal_lm(tmp_path / "tiny-lm")
    cfg = load_config(None, {
        "inputs": {"items": str(paths["items"]), "interactions": str(paths["interactions"]), "feedback": str(fb)},
        "encoder": {"model": str(tiny_model_dir), "max_length": 32},
        "retrieval": {"top_k": 2},
        "matcher": {"enabled": False},
        "rerank": {"enabled": True, "model": str(lm), "candidates": 4, "max_new_tokens": 16},
        "output": {"path": str(tmp_path / "out"), "run_id": "r1"},
    })
    result = run_job(cfg)
    run_dir = result.run_dir
    recs = pads.dataset(os.path.join(run_dir, "recommendations"), format="parquet").to_table()
    assert recs.schema.equals(schemas.RECOMMENDATIONS)
    by_user = {}
    for r in recs.sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist():
        by_user.setdefault(r["user_id"], []).append(r)
    assert {u: [r["rank"] for r in rows] for u, rows in by_user.items()} == {u: [1, 2] for u in ("u1", "u2", "u3", "u4")}
    assert "a2" not in {r["item_id"] for r in by_user["u1"]}  # dismissed within the window
    assert "e1" not in {r["item_id"] for r in by_user["u4"]}  # clicked: history now

    status = {r["user_id"]: r for r in pq.read_table(os.path.join(run_dir, "rerank_status")).to_pylist()}
    assert set(status) == set(by_user)
    if status["u2"]["status"] == "fallback":  # the top-K order: the expired dismissal is back first
        assert by_user["u2"][0]["item_id"] == "b2"

    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    rerank = manifest["rerank"]
    assert rerank["users"]["total"] == 4 and rerank["users"]["prompted"] == 4
    assert sum(rerank["users"][s] for s in ("used", "partial", "fallback", "not_selected")) == 4
    assert rerank["candidates"] == 4 and rerank["top_k"] == 2 and rerank["template"]["name"] == "rerank-v1"
    assert 0 < rerank["tokens"]["out"] <= 4 * 16 and rerank["tokens"]["in"] > 0
    assert "rerank" in [s["name"] for s in manifest["stages"]]
    feedback = manifest["inputs"]["feedback"]
    assert (feedback["clicks_merged"], feedback["dismissals_active"], feedback["dismissals_expired"]) == (1, 1, 1)
    assert not os.path.exists(os.path.join(run_dir, "_work"))  # the candidates were a work table
