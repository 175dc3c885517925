"""The two-tower matcher: sequences, the loss, learning a toy, Ray Train (2 workers), resume."""

from __future__ import annotations

import io
import os

import numpy as np
import polars as pl
import pytest
import torch

from chatrec.config import MatcherConfig
from chatrec.matcher.sequences import build_sequences
from chatrec.matcher.training import (
    SeenPairs,
    TrainingData,
    build_model,
    in_batch_loss,
    item_vectors,
    run_epoch,
    user_vectors,
)
from chatrec.runtime import ActorPlan
from pipelines.train_matcher import hold_out, train_matcher

PARAMS = dict(dim=16, max_history=4, heads=2, layers=1, dropout=0.0, temperature=0.1, lr=1e-2,
              weight_decay=0.0, batch_size=64, max_epochs=3, patience=3, seed=0)


def _log(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")


def pairs_log(n_pairs: int = 6, users: int = 60, seed: int = 0) -> tuple[pl.DataFrame, list[str]]:
    """Every user watches a few pairs, always a{i} then b{i}: after a{i}, b{i} is the answer."""
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for u in range(users):
        for i in rng.choice(n_pairs, size=3, replace=False):
            rows += [(f"u{u:03d}", f"a{i}", t), (f"u{u:03d}", f"b{i}", t + 1)]
            t += 2
    items = sorted({f"{p}{i}" for p in "ab" for i in range(n_pairs)})
    return _log(rows), items


def test_sequences_are_chronological_and_histories_newest_first():
    log = _log([("u1", "b", 3), ("u1", "a", 1), ("u1", "c", 2), ("u1", "a", 5), ("u2", "c", 1)])
    rows = {"a": 0, "b": 1, "c": 2}
    seq = build_sequences(log, rows, 3)
    # u1: c (2), b (3), a (5: its repeat counts at its latest time); u2: c.
    assert seq.user_ids == ["u1", "u2"] and seq.items.tolist() == [2, 1, 0, 2]
    assert seq.histories(np.array([0, 0]), np.array([3, 1]), 2).tolist() == [[0, 1], [2, -1]]
    users, positions = seq.examples()
    assert list(zip(users, positions)) == [(0, 1), (0, 2)]  # u2 has nothing to predict from
    assert seq.targets(users, positions).tolist() == [1, 0]


def test_hold_out_takes_each_users_latest_items_and_spares_short_users():
    log = _log([("long", f"i{k}", k) for k in range(20)] + [("short", "i0", 1), ("short", "i1", 2)])
    train, valid = hold_out(log, 0.1)
    assert sorted(valid["item_id"].to_list()) == ["i18", "i19"]
    assert set(valid["user_id"]) == {"long"} and train.height == 20


def test_a_users_own_items_are_never_negatives():
    log = _log([("u0", "a", 1), ("u0", "b", 2), ("u1", "c", 1)])
    seq = build_sequences(log, {"a": 0, "b": 1, "c": 2}, 3)
    users, targets = torch.tensor([0, 1]), torch.tensor([1, 2])
    log_q = torch.zeros(3)
    # User 0 scores its own item b (target of row 0) and c; user 1 likes b hugely, but b is
    # user 0's target, not user 1's item: it stays a negative for user 1.
    logits = torch.tensor([[5.0, 5.0], [9.0, 0.0]])
    loss = in_batch_loss(logits, users, targets, log_q, SeenPairs(seq))
    expected = (torch.nn.functional.cross_entropy(logits, torch.arange(2), reduction="none")).mean()
    assert loss == pytest.approx(float(expected))
    # Now c is one of user 0's items too: masked for user 0, so row 0's loss becomes 0.
    log2 = _log([("u0", "a", 1), ("u0", "b", 2), ("u0", "c", 3), ("u1", "c", 1)])
    masked = in_batch_loss(logits, users, targets, log_q, SeenPairs(build_sequences(log2, {"a": 0, "b": 1, "c": 2}, 3)))
    row1 = torch.nn.functional.cross_entropy(logits[1:], torch.tensor([1]))
    assert masked == pytest.approx(float(row1) / 2)


def _toy_data(log, items, valid=None):
    rows = {item: r for r, item in enumerate(items)}
    seq = build_sequences(log, rows, len(items))
    text = np.random.default_rng(1).normal(size=(len(items), 8)).astype(np.float32)
    return TrainingData.build(text, seq, valid or {})


def test_a_tiny_matcher_learns_what_follows_what():
    log, items = pairs_log()
    data = _toy_data(log, items)
    torch.manual_seed(0)
    model = build_model(n_items=len(items), text_dim=8, params=PARAMS)
    model.has_id.copy_(torch.from_numpy(data.has_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=PARAMS["lr"])
    text, seen, log_q = torch.from_numpy(data.text), SeenPairs(data.sequences), torch.from_numpy(data.log_q)
    losses = [
        run_epoch(model, optimizer, data, text, data.sequences.examples(), batch_size=64, max_history=4,
                  rng=np.random.default_rng(epoch), seen_keys=seen, log_q=log_q)
        for epoch in range(40)
    ]
    assert losses[-1] < 0.5 * losses[0]
    assert_b_follows_a(model, item_vectors(model, text), items)


def assert_b_follows_a(model, vectors, items, n_pairs: int = 6):
    """After a{i} alone, b{i} is the user's best unseen item (pairs_log's answer)."""
    for i in range(n_pairs):
        history = np.array([[items.index(f"a{i}"), -1, -1, -1]])
        scores = (user_vectors(model, vectors, history) @ vectors.T)[0]
        scores[items.index(f"a{i}")] = float("-inf")
        assert items[int(scores.argmax())] == f"b{i}"


def test_the_profile_token_tells_apart_users_whose_histories_are_the_same():
    """Every user watches s then one of r, b: which one only their profile says."""
    from chatrec.matcher.profiles import UserProfiles

    items = ["s", "r", "b"]
    rows = [r for u in range(80) for r in ((f"u{u:02d}", "s", 2 * u), (f"u{u:02d}", "rb"[u % 2], 2 * u + 1))]
    log = _log(rows)
    text_of_user = {f"u{u:02d}": ("likes red" if u % 2 == 0 else "likes blue") for u in range(80)}
    profile_vectors = np.eye(2, 8, dtype=np.float32)  # (2 texts, text_dim)
    profiles = UserProfiles({"likes red": 0, "likes blue": 1}, profile_vectors, text_of_user)
    seq = build_sequences(log, {item: r for r, item in enumerate(items)}, len(items))
    text = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)

    def trained(profile: bool):
        data = TrainingData.build(text, seq, {}, profiles.of_users(seq.user_ids) if profile else None)
        torch.manual_seed(0)
        model = build_model(n_items=3, text_dim=8, params={**PARAMS, "profile": profile})
        model.has_id.copy_(torch.from_numpy(data.has_id))
        optimizer = torch.optim.AdamW(model.parameters(), lr=PARAMS["lr"])
        for epoch in range(40):
            run_epoch(model, optimizer, data, torch.from_numpy(text), seq.examples(), batch_size=32, max_history=4,
                      rng=np.random.default_rng(epoch), seen_keys=SeenPairs(seq), log_q=torch.from_numpy(data.log_q))
        vectors = item_vectors(model, torch.from_numpy(text))  # (3, dim)
        history = np.array([[0, -1, -1, -1]] * 3)  # (3 users, L): s
        who = profiles.of_texts(["likes red", "likes blue", None])  # (3, text_dim): the last has no profile
        return (user_vectors(model, vectors, history, who if profile else None) @ vectors.T).numpy()  # (3, 3)

    with_profile = trained(True)
    assert with_profile[0, 1] > with_profile[0, 2] and with_profile[1, 2] > with_profile[1, 1]
    assert np.isfinite(with_profile[2]).all()  # no profile: the token is masked, the history still scores
    without = trained(False)
    assert np.allclose(without[0], without[1])  # the history alone cannot tell red from blue


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    log, items = pairs_log()
    data = _toy_data(log, items)
    model = build_model(n_items=len(items), text_dim=8, params=PARAMS)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = build_model(n_items=len(items), text_dim=8, params=PARAMS)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    text = torch.from_numpy(data.text)
    assert torch.equal(item_vectors(model, text), item_vectors(again, text))


def _train(tmp_path, name, *, workers=1, max_failures=0, fault=None, epochs=3):
    log, items = pairs_log()
    data = _toy_data(log, items)
    cfg = MatcherConfig(enabled=True, dim=16, max_history=4, batch_size=64, max_epochs=epochs, patience=5,
                        max_failures=max_failures, lr=1e-2)
    plan = ActorPlan(num_actors=workers, num_cpus=0.5, num_gpus=0, threads=1, device="cpu")
    return train_matcher(text=data.text, item_ids=items, log=log, cfg=cfg, plan=plan,
                         storage=str(tmp_path / "ckpt"), name=name, fault_injection=fault)


def test_ray_train_with_two_workers_reports_every_epoch(ray_cluster, tmp_path):
    trained = _train(tmp_path, "two-workers", workers=2)
    assert [h["epoch"] for h in trained.state["history"]] == [0, 1, 2]
    assert trained.state["starts"] == [0]
    assert trained.manifest()["validation"]["users"] > 0
    assert set(trained.state_dict) >= {"item_ids.weight", "has_id", "log_scale"}


def test_worker_failure_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    marker = str(tmp_path / "failed-once")
    trained = _train(tmp_path, "fails", max_failures=1, fault={"fail_once_at_epoch": 2, "fail_marker": marker})
    assert os.path.exists(marker)  # the failure happened
    # The second attempt started after epoch 1's checkpoint, not from scratch.
    assert trained.state["starts"] == [0, 2]
    assert [h["epoch"] for h in trained.state["history"]] == [0, 1, 2]


def test_a_rerun_of_the_same_name_resumes_instead_of_restarting(ray_cluster, tmp_path):
    marker = str(tmp_path / "failed-once")
    with pytest.raises(Exception, match="simulated worker failure"):
        _train(tmp_path, "rerun", fault={"fail_once_at_epoch": 1, "fail_marker": marker})
    resumed = _train(tmp_path, "rerun")
    assert resumed.state["starts"] == [0, 1]
    # A finished training is not repeated: the same state comes back.
    again = _train(tmp_path, "rerun")
    assert again.state == resumed.state


def test_id_dropout_at_one_leaves_every_item_to_its_text_in_training_only():
    torch.manual_seed(0)
    model = build_model(n_items=5, text_dim=8, params={**PARAMS, "id_dropout": 1.0})
    model.has_id.fill_(True)
    torch.nn.init.normal_(model.item_ids.weight, std=1.0)  # id vectors large enough to matter
    text, rows = torch.randn(5, 8), torch.arange(5)
    model.train()
    assert torch.allclose(model.items(text, rows), model.text_only(text))  # (5, dim)
    model.eval()  # serving keeps the id vectors
    assert not torch.allclose(model.items(text, rows), model.text_only(text))


def test_an_item_without_an_id_is_scored_by_its_text_in_fused_scoring():
    from chatrec.baselines.ease import EaseRecency
    from chatrec.baselines.interaction_matrix import build_interaction_matrix
    from chatrec.catalogue import ItemCatalogue
    from chatrec.encoder import to_fixed_size_list
    from chatrec.matcher.fusion import Fusion
    from chatrec.recommender import Recommender
    from chatrec.retrieval import ExactIndex
    import pyarrow as pa

    ids = ["a", "b", "c", "d"]  # d: no interactions, no id vector
    tower = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    tower /= np.linalg.norm(tower, axis=1, keepdims=True)
    text = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1], [0, 0, 1]], np.float32)  # d's text is c's
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    log = _log([("u1", "c", 1), ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3)])
    matrix = build_interaction_matrix(log, item_universe=ids)
    params = {"l2": 1.0, "tau": float("inf")}
    catalogue = ItemCatalogue(item_ids=np.array(ids, dtype=object), vectors=tower, display_titles=ids,
                              categories=[frozenset()] * 4, entities=[frozenset()] * 4, entity_items={})
    batch = pa.table({"user_id": ["u1"], "embedding": to_fixed_size_list(np.array([[1, 0]], np.float32)),
                      "seen_rows": pa.array([[2]], pa.list_(pa.int32())),
                      "recent_rows": pa.array([[2]], pa.list_(pa.int32()))})

    def top(text_weight: float, k: int = 3, slots: int = 0) -> tuple[list, list]:
        fusion = Fusion(1.0, 1.0, 1.0, params, [], text_weight, 1.0, 0.0)
        rec = Recommender(index=ExactIndex.build(tower).to_bytes(), catalogue=catalogue, top_k=k,
                          search_batch_size=8, run_id="r", backend="cpu", strategy="two-tower",
                          fusion={"fusion": fusion, "collaborative": EaseRecency().fit(matrix, params),
                                  "text": text, "id_less": np.array([False, False, False, True])},
                          new_item_slots=slots, new_rows=np.array([3]))
        out = rec(batch)
        return out["item_id"].to_pylist(), out["strategy"].to_pylist()

    # The tower alone prefers a and b; d's text matches the user's history (c) exactly.
    assert top(0.0) == (["a", "b", "d"], ["two-tower"] * 3)
    assert top(2.0) == (["d", "a", "b"], ["content", "two-tower", "two-tower"])
    # A new-item slot puts d in a list too short for it, in the last place.
    assert top(0.0, k=2) == (["a", "b"], ["two-tower"] * 2)
    assert top(0.0, k=2, slots=1) == (["a", "d"], ["two-tower", "new-item"])


def test_a_fusion_recorded_before_the_new_item_term_has_none():
    from chatrec.matcher.fusion import Fusion

    old = {"weight": 0.9, "ease": {"l2": 400, "tau": "inf"}, "tower_scale": 2.0, "collaborative_scale": 3.0}
    fusion = Fusion.from_manifest(old)
    assert (fusion.cold_weight, fusion.cold_offset) == (0.0, 0.0) and fusion.partner_params["tau"] == float("inf") and fusion.partner == "ease-recency"
    tuned = Fusion(0.9, 2.0, 3.0, {"l2": 400, "tau": 10}, [], 0.5, 4.0, 1.0, ({"text_weight": 0.5},))
    assert Fusion.from_manifest(tuned.manifest()) == tuned


def test_validation_scores_a_bounded_seeded_sample_in_blocks(monkeypatch):
    import chatrec.matcher.training as training
    from chatrec.evaluation.metrics import ndcg_of_topk

    log, items = pairs_log(users=40)
    rows = {item: r for r, item in enumerate(items)}
    # Each user's last a/b item is held out; the rest is training history.
    last = log.sort("timestamp").group_by("user_id", maintain_order=True).agg(pl.col("item_id").last())
    train = log.join(last, on=["user_id", "item_id"], how="anti")
    seq = build_sequences(train, rows, len(items))
    index = {u: i for i, u in enumerate(seq.user_ids)}
    valid = {index[u]: np.array([rows[i]]) for u, i in last.iter_rows() if u in index}
    data = TrainingData.build(np.random.default_rng(1).normal(size=(len(items), 8)).astype(np.float32), seq, valid)
    torch.manual_seed(0)
    model = build_model(n_items=len(items), text_dim=8, params=PARAMS)
    model.has_id.copy_(torch.from_numpy(data.has_id))
    text = torch.from_numpy(data.text)

    def brute_force(positions: np.ndarray) -> float:
        """Every item scored for the users at `positions` of valid_users, training items excluded."""
        vectors = item_vectors(model, text)
        users = data.valid_users[positions]
        scores = user_vectors(model, vectors, seq.histories(users, seq.lengths[users], PARAMS["max_history"])) @ vectors.T
        for row, u in enumerate(users):
            scores[row, seq.items[seq.offsets[u]:seq.offsets[u + 1]]] = float("-inf")
        top = torch.topk(scores, 10, dim=1).indices.numpy()
        return ndcg_of_topk(top, [data.valid_targets[p] for p in positions], 10)

    everyone = training.validate(model, data, text, max_history=PARAMS["max_history"])
    assert everyone["ndcg@10"] == pytest.approx(brute_force(np.arange(len(data.valid_users))))
    monkeypatch.setattr(training, "VALIDATION_BLOCK", 3)  # blocks change nothing
    assert training.validate(model, data, text, max_history=PARAMS["max_history"]) == pytest.approx(everyone)
    monkeypatch.setattr(training, "VALIDATION_USERS", 7)
    sample = training.validation_sample(len(data.valid_users))
    assert len(sample) == 7 and np.array_equal(sample, training.validation_sample(len(data.valid_users)))
    sampled = training.validate(model, data, text, max_history=PARAMS["max_history"])
    assert sampled["ndcg@10"] == pytest.approx(brute_force(sample))
