"""The refresh's parts without Ray: the output lock, retention, the embedding cache, user
history keys, and carrying a matcher over to a changed catalogue."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import torch

from chatrec.embedding_cache import MAX_PARTS, EmbeddingCache, encoder_key
from chatrec.encoder import to_fixed_size_list
from chatrec.errors import PublishError
from chatrec.histories import history_keys, item_keys
from chatrec.output_lock import LOCK_FILE, OutputLock
from chatrec.publish import RunOutput, read_latest
from chatrec.retention import prune_runs
from pipelines.embed_users import split_reusable
from pipelines.train_matcher import remap_item_rows

# -- the lock -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_the_first_holds_the_output(tmp_path):
    with OutputLock(str(tmp_path), "first"):
        with pytest.raises(PublishError, match=r"in use by run 'first'.*only one run"):
            OutputLock(str(tmp_path), "second").acquire()
    # Released: the next run takes it.
    with OutputLock(str(tmp_path), "second"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "second"
    assert not (tmp_path / LOCK_FILE).exists()


def _write_lock(path, **fields):
    record = {"run_id": "dead", "host": socket.gethostname(), "pid": os.getpid(), "token": "t",
              "heartbeat": time.time(), **fields}
    path.write_text(json.dumps(record))


def test_the_lock_of_a_killed_process_on_this_host_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that existed and has exited
    _write_lock(tmp_path / LOCK_FILE, pid=child.pid)
    with OutputLock(str(tmp_path), "next"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "next"


def test_a_lock_from_another_host_expires_after_its_ttl(tmp_path):
    _write_lock(tmp_path / LOCK_FILE, host="elsewhere", pid=1, heartbeat=time.time() - 10)
    with pytest.raises(PublishError, match="in use"):
        OutputLock(str(tmp_path), "next", ttl=60).acquire()
    with OutputLock(str(tmp_path), "next", ttl=5):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["run_id"] == "next"


# -- retention ------------------------------------------------------------------------------


def _publish(root, run_id, created_at):
    out = RunOutput(str(root), run_id)
    out.prepare()
    out.write_json("manifest.json", {"run_id": run_id, "created_at": created_at})
    out.commit()


def test_retention_keeps_the_newest_runs_and_never_the_live_one(tmp_path):
    # Run ids that do not sort by time: the manifests' created_at decides.
    for run_id, created in (("b-old", "2026-01-01T00:00:00+00:00"), ("a-mid", "2026-01-02T00:00:00+00:00"),
                            ("c-new", "2026-01-03T00:00:00+00:00")):
        _publish(tmp_path, run_id, created)
    (tmp_path / ".staging" / "failed").mkdir(parents=True)  # a failed run's staging stays
    assert prune_runs(str(tmp_path), keep=2) == ["b-old"]
    assert sorted(os.listdir(tmp_path / "runs")) == ["a-mid", "c-new"]
    assert (tmp_path / ".staging" / "failed").is_dir()

    # LATEST rolled back to an older run: that run is live and stays whatever its age.
    (tmp_path / "LATEST").write_text("runs/a-mid\n")
    assert prune_runs(str(tmp_path), keep=1) == []
    assert read_latest(str(tmp_path)).endswith("runs/a-mid")
    with pytest.raises(ValueError):
        prune_runs(str(tmp_path), keep=0)


# -- the embedding cache --------------------------------------------------------------------


def _vectors(hashes, dim=4, offset=0.0):
    data = np.arange(len(hashes) * dim, dtype=np.float32).reshape(-1, dim) + offset
    return pa.table({"text_sha256": pa.array(hashes), "embedding": to_fixed_size_list(data)})


def test_the_cache_returns_only_what_it_holds_and_keys_on_the_encoder(tmp_path):
    key = encoder_key(fingerprint="f1", max_length=128, precision="fp32")
    assert key != encoder_key(fingerprint="f2", max_length=128, precision="fp32")
    assert key != encoder_key(fingerprint="f1", max_length=64, precision="fp32")
    assert key != encoder_key(fingerprint="f1", max_length=128, precision="fp16")

    cache = EmbeddingCache(str(tmp_path), key, 4)
    assert cache.lookup(["h1"]).num_rows == 0
    assert cache.add(_vectors(["h1", "h2", "h2"]), name="r1") == 2  # equal texts stored once
    found = cache.lookup(["h2", "h3"])
    assert found.column("text_sha256").to_pylist() == ["h2"]
    assert found.column("embedding").to_pylist() == [[4.0, 5.0, 6.0, 7.0]]
    assert EmbeddingCache(str(tmp_path), encoder_key(fingerprint="f2", max_length=128, precision="fp32"),
                          4).lookup(["h1"]).num_rows == 0


def test_compaction_keeps_the_entries_in_use_in_one_part(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "k", 4)
    for i in range(MAX_PARTS):
        cache.add(_vectors([f"h{i}"]), name=f"r{i}")
    assert cache.compact(["h0"]) is None  # not yet too many parts
    cache.add(_vectors(["h-last"]), name="last")
    assert cache.compact(["h0", "h-last"]) == 2
    assert len(os.listdir(tmp_path / "embedding-cache" / "k")) == 1
    assert sorted(cache.lookup([f"h{i}" for i in range(MAX_PARTS)] + ["h-last"])
                  .column("text_sha256").to_pylist()) == ["h-last", "h0"]


# -- history keys and reusing user vectors --------------------------------------------------


def _histories(recent, profiles=None):
    n = len(recent)
    return pa.table({
        "user_id": pa.array([f"u{i}" for i in range(n)]),
        "recent_rows": pa.array(recent, pa.list_(pa.int32())),
        "profile_text": pa.array(profiles or [None] * n, pa.string()),
    })


def test_a_history_key_changes_exactly_when_the_user_vector_could():
    items = pa.table({"item_id": ["a", "b", "c"], "text_sha256": ["x", "y", "z"]})
    base = history_keys(_histories([[0, 1], [1, 0], [2]]), item_keys(items), "tower")
    assert len(set(base.tolist())) == 3  # order matters: [a, b] != [b, a]
    assert (history_keys(_histories([[0, 1], [1, 0], [2]]), item_keys(items), "tower") == base).all()
    edited = pa.table({"item_id": ["a", "b", "c"], "text_sha256": ["x", "y", "CHANGED"]})
    assert (history_keys(_histories([[0, 1], [1, 0], [2]]), item_keys(edited), "tower") == base).tolist() == [
        True, True, False]
    assert not (history_keys(_histories([[0, 1], [1, 0], [2]]), item_keys(items), "other") == base).any()
    profiled = history_keys(_histories([[0, 1], [1, 0], [2]], ["p", None, None]), item_keys(items), "tower")
    assert (profiled == base).tolist() == [False, True, True]


def test_only_users_with_an_unchanged_key_reuse_their_vector():
    dim = 2
    histories = pa.table({
        "user_id": ["u1", "u2", "u3"], "recent_rows": pa.array([[0], [1], [2]], pa.list_(pa.int32())),
        "seen_rows": pa.array([[0], [1], [2]], pa.list_(pa.int32())), "history_len": pa.array([1, 1, 1], pa.int32()),
        "profile_text": pa.array([None] * 3, pa.string()), "history_key": pa.array([10, 20, 30], pa.int64()),
    })
    previous = pa.table({"user_id": ["u2", "u1", "u9"], "history_key": pa.array([20, 11, 90], pa.int64()),
                         "embedding": to_fixed_size_list(np.array([[2, 2], [1, 1], [9, 9]], np.float32))})
    reused, todo = split_reusable(histories, previous, dim)
    assert reused.column("user_id").to_pylist() == ["u2"]
    assert reused.column("embedding").to_pylist() == [[2.0, 2.0]]
    assert todo.column("user_id").to_pylist() == ["u1", "u3"]  # u1's key changed, u3 is new
    none_reused, all_todo = split_reusable(histories, None, dim)
    assert none_reused.num_rows == 0 and all_todo.num_rows == 3


# -- a matcher carried over to a changed catalogue ------------------------------------------


def test_a_matcher_keeps_the_id_vectors_of_items_both_catalogues_share():
    saved = ["a", "b", "c"]
    weight = torch.arange(6, dtype=torch.float32).reshape(3, 2)  # (3, dim)
    state = {"item_ids.weight": weight, "has_id": torch.tensor([True, True, False]), "other": torch.ones(1)}
    remapped = remap_item_rows(state, saved, ["c", "new", "a"])  # b removed, "new" added
    assert remapped["item_ids.weight"].tolist() == [[4.0, 5.0], [0.0, 0.0], [0.0, 1.0]]
    assert remapped["has_id"].tolist() == [False, False, True]  # the new item is placed by its text
    assert remapped["other"] is state["other"]
    assert remap_item_rows(state, saved, saved) is state


def test_the_retrain_policy_decides_when_the_matcher_is_trained_again():
    from datetime import datetime, timedelta, timezone

    from chatrec.config import RefreshConfig
    from chatrec.previous_run import PreviousRun

    trained = datetime(2026, 11, 1, tzinfo=timezone.utc)
    record = {"params": {"dim": 8}, "text_fingerprint": "t", "trained_at": trained.isoformat(), "log_rows": 1000}
    previous = PreviousRun("out/runs/r", {"run_id": "r", "matcher": record})

    def why(policy, log_rows=1000, days=1, params=None, text="t"):
        return previous.retrain_reason(RefreshConfig(**policy), params=params or {"dim": 8}, text_fingerprint=text,
                                       log_rows=log_rows, now=trained + timedelta(days=days))

    assert why({"retrain": "never"}, log_rows=10_000, days=100) is None
    assert why({"retrain": "always"}) == "refresh.retrain: always"
    assert why({"retrain": "weekly"}, days=6) is None and "weekly" in why({"retrain": "weekly"}, days=8)
    assert why({"retrain": "log-growth"}, log_rows=1099) is None
    assert "grew by 10%" in why({"retrain": "log-growth"}, log_rows=1100)
    assert why({"retrain": "log-growth", "retrain_log_growth": 0.5}, log_rows=1400) is None
    # Whatever the policy, a matcher that no longer fits is trained again.
    assert why({"retrain": "never"}, params={"dim": 16}) == "matcher settings changed"
    assert "text vectors" in why({"retrain": "never"}, text="other")
    assert PreviousRun("x", {"run_id": "x", "matcher": None}).retrain_reason(
        RefreshConfig(), params={}, text_fingerprint="t", log_rows=1) == "the previous run has no reusable matcher"
