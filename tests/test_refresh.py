"""The nightly refresh on a real local Ray with a tiny real BERT: what it re-embeds, what it
reuses, what the manifest says; a second run on a locked output is refused. (Crashes and
resumes: tests/test_fault_injection.py.)"""

import json
import os
import random
import socket
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from chatrec.config import load_config
from chatrec.errors import PublishError
from chatrec.output_lock import LOCK_FILE
from chatrec.publish import read_latest
from pipelines.full_run import run_job
from tests.conftest import VOCAB_WORDS, write_parquet

N_ITEMS, N_USERS = 200, 300


def catalogue(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"item_id": f"i{n:03d}", "title": " ".join(rng.sample(VOCAB_WORDS, 2)),
         "categories": [rng.choice(["action", "comedy", "drama", "horror", "romance"])],
         "description": " ".join(rng.sample(VOCAB_WORDS, 5))}
        for n in range(N_ITEMS)
    ]


def interaction_log(items: list[dict], seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"user_id": f"u{u:03d}", "item_id": item["item_id"], "timestamp": 1000 + t}
        for u in range(N_USERS)
        for t, item in enumerate(rng.sample(items, rng.randint(2, 6)))
    ]


def write_inputs(directory: Path, items: list[dict], log: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet(directory / "items.parquet", items)
    write_parquet(directory / "log.parquet", log)


def config(data: Path, out: Path, model: Path, **extra) -> dict:
    return {
        "inputs": {"items": str(data / "items.parquet"), "interactions": str(data / "log.parquet")},
        "encoder": {"model": str(model), "max_length": 32, "batch_size": 16},
        "matcher": {"enabled": False},
        "retrieval": {"top_k": 5},
        "output": {"path": str(out)},
        **extra,
    }


def table(run_dir: str, name: str, sort: list[str], drop=("run_id",)):
    t = pads.dataset(os.path.join(run_dir, name), format="parquet").to_table()
    return t.drop_columns([c for c in drop if c in t.column_names]).sort_by([(c, "ascending") for c in sort])


@pytest.fixture(scope="module")
def refreshed(ray_cluster, tiny_model_dir, tmp_path_factory):
    """A full run, then a refresh after 1% of items were edited (2), 3 added and 1 removed."""
    root = tmp_path_factory.mktemp("refresh")
    items = catalogue()
    log = interaction_log(items)
    write_inputs(root / "day1", items, log)
    first = run_job(load_config(None, config(root / "day1", root / "out", tiny_model_dir,
                                             output={"path": str(root / "out"), "run_id": "day1"})))

    edited = [dict(it) for it in items]
    edited[10]["description"] = "space ship war city night"  # 1% of 200 items edited
    edited[20]["title"] = "love story"
    removed = edited.pop(30)["item_id"]  # i030: nobody's history must keep it
    # u000 keeps only their latest interaction: a new item with that item's text is then
    # their nearest unseen item, so it must reach their list the same night.
    seen_last = max((r for r in log if r["user_id"] == "u000"), key=lambda r: r["timestamp"])["item_id"]
    log2 = [r for r in log if r["item_id"] != removed and (r["user_id"] != "u000" or r["item_id"] == seen_last)]
    twin = next(dict(it) for it in edited if it["item_id"] == seen_last)
    new = [{**twin, "item_id": "i_new0"}] + [
        {"item_id": f"i_new{k}", "title": f"gamma delta {k}", "categories": ["drama"], "description": "blue day"}
        for k in (1, 2)
    ]
    write_inputs(root / "day2", edited + new, log2)
    cfg = load_config(None, config(root / "day2", root / "out", tiny_model_dir,
                                   output={"path": str(root / "out"), "run_id": "day2"}))
    second = run_job(cfg, refresh=True)
    return {"root": root, "first": first, "second": second, "log": (log, log2), "items": (items, edited + new),
            "edited": {"i010", "i020"}, "cfg": cfg}


def test_a_refresh_re_embeds_exactly_the_new_and_edited_items(refreshed):
    refresh = refreshed["second"].manifest["refresh"]
    assert refresh["previous_run"].endswith("runs/day1")
    # i_new0 repeats a known text: the cache serves it, so 2 edited + 2 new texts are embedded.
    assert refresh["items"] == {"added": 3, "changed": 2, "removed": 1, "unchanged": 197,
                                "embedded": 4, "reused": 198}
    assert refresh["embedding_cache_invalidated"] is None
    assert refreshed["second"].manifest["stages"][2]["name"] == "embed-items"
    assert refreshed["second"].manifest["stages"][2]["rows"] == 4
    # The removed item left the index: nobody is recommended it.
    recs = table(refreshed["second"].run_dir, "recommendations", ["user_id", "rank"])
    assert "i030" not in set(recs.column("item_id").to_pylist())
    vectors = table(refreshed["second"].run_dir, "item_embeddings", ["item_id"])
    assert vectors.num_rows == len(refreshed["items"][1])


def test_reused_vectors_equal_the_previous_run_and_new_items_reach_lists(refreshed):
    before = table(refreshed["first"].run_dir, "item_embeddings", ["item_id"])
    after = table(refreshed["second"].run_dir, "item_embeddings", ["item_id"])
    old = dict(zip(before.column("item_id").to_pylist(), before.column("embedding").to_pylist()))
    for item_id, vector in zip(after.column("item_id").to_pylist(), after.column("embedding").to_pylist()):
        if item_id in old and item_id not in refreshed["edited"]:
            assert vector == old[item_id]
    recs = table(refreshed["second"].run_dir, "recommendations", ["user_id", "rank"]).to_pylist()
    assert [r["item_id"] for r in recs if r["user_id"] == "u000"][0] == "i_new0"  # same night, by text alone


def test_only_users_whose_inputs_changed_get_new_vectors(refreshed):
    def histories(log, items):
        text = {it["item_id"]: (it["title"], it["description"], tuple(it["categories"])) for it in items}
        out = {}
        for r in sorted(log, key=lambda r: -r["timestamp"]):
            out.setdefault(r["user_id"], []).append((r["item_id"], text[r["item_id"]]))
        return out

    before_h, after_h = (histories(log, items) for log, items in zip(refreshed["log"], refreshed["items"]))
    changed = {u for u in after_h if after_h[u] != before_h.get(u)}
    users = refreshed["second"].manifest["refresh"]["users"]
    assert users["recomputed"] == len(changed) > 0
    assert users["reused"] == N_USERS - len(changed)
    before = table(refreshed["first"].run_dir, "user_embeddings", ["user_id"]).to_pylist()
    after = {r["user_id"]: r for r in table(refreshed["second"].run_dir, "user_embeddings", ["user_id"]).to_pylist()}
    for row in before:
        if row["user_id"] not in changed:
            assert after[row["user_id"]]["embedding"] == row["embedding"]


def test_a_new_model_re_embeds_everything_and_says_why(refreshed, tmp_path):
    from transformers import BertModel

    import torch

    other = tmp_path / "other-bert"
    torch.manual_seed(1)
    model = BertModel.from_pretrained(refreshed["cfg"].encoder.model)
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.save_pretrained(other)
    for name in os.listdir(refreshed["cfg"].encoder.model):
        if name.startswith(("tokenizer", "vocab", "special")):
            (other / name).write_bytes(Path(refreshed["cfg"].encoder.model, name).read_bytes())
    cfg = load_config(None, {**refreshed["cfg"].to_dict(), "encoder": {
        **refreshed["cfg"].encoder.model_dump(), "model": str(other)}, "output": {
        "path": str(refreshed["root"] / "out"), "run_id": "new-model"}})
    manifest = run_job(cfg, refresh=True).manifest
    assert manifest["refresh"]["items"]["embedded"] == len(refreshed["items"][1])
    assert manifest["refresh"]["items"]["reused"] == 0
    assert "encoder model changed" in manifest["refresh"]["embedding_cache_invalidated"]
    assert manifest["refresh"]["users"]["reused"] == 0


def test_a_second_run_on_a_locked_output_is_refused(refreshed):
    # A live holder: this very process, as a run started elsewhere in it would be.
    lock = refreshed["root"] / "out" / LOCK_FILE
    lock.write_text(json.dumps({"run_id": "other", "host": socket.gethostname(), "pid": os.getpid(),
                                "token": "x", "heartbeat": time.time()}))
    try:
        with pytest.raises(PublishError, match="in use by run 'other'"):
            run_job(refreshed["cfg"].model_copy(update={"output": refreshed["cfg"].output.model_copy(
                update={"run_id": "blocked"})}), refresh=True)
    finally:
        lock.unlink()
    assert not (refreshed["root"] / "out" / ".staging" / "blocked").exists()
