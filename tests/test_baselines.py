"""Classic baselines: known-answer toy logs, invariants every baseline keeps, and the job.

The toy logs are built so the right answer is obvious by hand: items come in pairs that
are always consumed together, so a user holding one half of a pair must be offered the
other half first.
"""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from chatrec import schemas
from chatrec.baselines import BASELINES, get_baseline
from chatrec.baselines.ease import check_ease_size, ease_weights
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.itemknn import cosine_similarity, keep_top_neighbors
from chatrec.baselines.recommend import recommend_codes, recommendation_tables
from chatrec.baselines.topk import top_k_excluding
from chatrec.baselines.tuning import METRIC, grid_points, tune
from chatrec.config import TableInput, load_config
from chatrec.errors import ConfigError, InputDataError
from chatrec.publish import read_latest
from pipelines.baseline import run_baseline
from tests.conftest import make_toy_catalogue, write_parquet

MATRIX_BASELINES = ["popularity", "itemknn", "ease", "ease-recency", "lowrank-recency"]
SIMILARITY_BASELINES = ["itemknn", "ease", "ease-recency", "lowrank-recency"]


def make_log(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*rows) if rows else ((), (), ())
    return pa.table(
        {"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
         "timestamp": pa.array(ts, pa.int64())}
    )


def fit(name: str, log: pa.Table, **params):
    baseline = get_baseline(name)
    return baseline.fit(build_interaction_matrix(log), baseline.resolve_params(params))


def recs_by_user(tables) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for t in tables:
        assert t.schema.equals(schemas.RECOMMENDATIONS)
        for r in t.to_pylist():
            out.setdefault(r["user_id"], []).append(r)
    return out


def pairs_log() -> pa.Table:
    """Pairs (a1,a2), (b1,b2), (c1,c2): 4 users each consume one whole pair; then probes.

    probe-a holds only a1, probe-b only b2, probe-c only c1: each one's partner is the
    answer, and a few single consumptions of x make x the most popular lone item.
    """
    rows = []
    for pair in "abc":
        for n in range(4):
            rows += [(f"{pair}-user{n}", f"{pair}1", 10), (f"{pair}-user{n}", f"{pair}2", 11)]
    rows += [("probe-a", "a1", 5), ("probe-b", "b2", 5), ("probe-c", "c1", 5)]
    rows += [(f"x-user{n}", "x", 1) for n in range(2)]
    return make_log(rows)


# -- interaction matrix -----------------------------------------------------------------


def test_matrix_codes_follow_id_order_and_repeats_count_once_at_newest_position():
    log = make_log([
        ("u2", "b", 100), ("u2", "a", 50), ("u2", "b", 10),  # b re-watched: once, newest position
        ("u1", "c", 7), ("u1", "a", 7), ("u1", "b", 3),  # a and c tie at t=7: a (smaller id) first
    ])
    m = build_interaction_matrix(log)
    assert m.user_ids.tolist() == ["u1", "u2"] and m.item_ids.tolist() == ["a", "b", "c"]
    assert m.X.toarray().tolist() == [[1, 1, 1], [1, 1, 0]]
    assert [m.item_ids[c] for c in m.history(0)] == ["a", "c", "b"]
    assert [m.item_ids[c] for c in m.history(1)] == ["b", "a"]
    w = m.recency_weights(2.0).toarray()
    assert w[1].tolist() == pytest.approx([math.exp(-1 / 2), 1.0, 0.0])  # b newest, a one step older
    assert m.recency_weights(math.inf) is m.X


def test_item_universe_adds_empty_columns_and_must_cover_the_log():
    log = make_log([("u", "b", 1)])
    m = build_interaction_matrix(log, item_universe=["c", "a", "b"])
    assert m.item_ids.tolist() == ["a", "b", "c"] and m.X.toarray().tolist() == [[0, 1, 0]]
    with pytest.raises(ValueError, match=r"misses 1 item\(s\) of the log, e.g. \['b'\]"):
        build_interaction_matrix(log, item_universe=["a"])


# -- top-K ------------------------------------------------------------------------------


def test_top_k_fixed_shape_ties_by_code_and_padding():
    scores = np.array(
        [[1.0, 5.0, 5.0, 5.0, 0.0],  # three-way tie at the top: codes 1, 2 win over 3
         [2.0, 2.0, 2.0, 2.0, 2.0],  # all tied, code 0 seen: 1, 2
         [9.0, 8.0, 7.0, 6.0, 5.0]],  # only code 4 unseen: one item, then padding
        dtype=np.float32,
    )
    seen = sp.csr_matrix(np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]]))
    top = top_k_excluding(scores, seen, 2)
    assert top.codes.shape == (3, 2) and top.scores.shape == (3, 2)
    assert top.codes.tolist() == [[1, 2], [1, 2], [4, -1]]
    assert top.scores[2, 0] == 5.0 and np.isneginf(top.scores[2, 1])
    wide = top_k_excluding(np.zeros((1, 3), np.float32), sp.csr_matrix((1, 3)), 5)
    assert wide.codes.tolist() == [[0, 1, 2, -1, -1]]  # K above the catalogue: padded, not ragged


def test_top_k_border_ties_do_not_depend_on_argpartition():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(200, 60)).astype(np.float32)  # many ties
    seen = sp.random(200, 60, density=0.2, random_state=3, format="csr")
    top = top_k_excluding(scores.copy(), seen, 7)
    masked = scores.copy()
    masked[seen.toarray() > 0] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :7]  # the oracle: full stable sort
    assert top.codes.tolist() == expected.tolist()


# -- popularity -------------------------------------------------------------------------


def test_popularity_order_ties_by_item_id_and_fallback_wording():
    log = make_log([
        ("u1", "m", 1), ("u2", "m", 1), ("u3", "m", 1), ("u3", "m", 2),  # m: 3 users (repeat once)
        ("u1", "k", 1), ("u2", "k", 1),  # k and z: 2 users each; k first (smaller id)
        ("u4", "z", 1), ("u5", "z", 1),
        ("u4", "b", 1),  # b: 1 user
    ])
    recs = recs_by_user(recommendation_tables(fit("popularity", log), top_k=4, strategy="popularity", run_id="r"))
    assert [r["item_id"] for r in recs["u5"]] == ["m", "k", "b"]  # z seen; only 3 unseen left
    assert [r["item_id"] for r in recs["u3"]] == ["k", "z", "b"]
    top = recs["u5"][0]
    assert top["score"] == pytest.approx(3 / 5) and top["because_item_id"] is None
    assert top["reason"] == "popular: 3 users interacted with it" and top["strategy"] == "popularity"


# -- similarity baselines: known answers --------------------------------------------------


@pytest.mark.parametrize("name", SIMILARITY_BASELINES)
def test_partner_of_a_pair_comes_first_because_of_its_half(name):
    # K = 10 covers every unseen item, fillers included.
    recs = recs_by_user(recommendation_tables(fit(name, pairs_log()), top_k=10, strategy=name, run_id="r",
                                              titles={"a1": "Heat (1995)"}))
    for probe, partner, half in [("probe-a", "a2", "a1"), ("probe-b", "b1", "b2"), ("probe-c", "c2", "c1")]:
        first = recs[probe][0]
        assert (first["item_id"], first["because_item_id"]) == (partner, half), (name, probe, recs[probe])
        assert first["strategy"] == name and first["rank"] == 1
    assert recs["probe-a"][0]["reason"] == "often together with Heat (1995)"
    assert recs["probe-b"][0]["reason"] == "often together with b2"  # no title: the id
    # a1 co-occurs with a2 only: the other six unseen items are filler, "because of" nothing.
    fillers = recs["probe-a"][1:]
    assert sorted(r["item_id"] for r in fillers) == ["b1", "b2", "c1", "c2", "x"]
    assert all(r["because_item_id"] is None and r["reason"].startswith("filler") for r in fillers)


@pytest.mark.parametrize("name", MATRIX_BASELINES)
def test_seen_never_recommended_and_k_rows_unless_fewer_unseen(name):
    rng = np.random.default_rng(11)
    rows = [(f"u{u}", f"i{rng.integers(0, 12)}", int(rng.integers(0, 100))) for u in range(30) for _ in range(5)]
    rows += [("greedy", f"i{i}", i) for i in range(10)]  # 12 items exist: 2 left unseen
    log = make_log(rows)
    seen: dict[str, set[str]] = {}
    for u, i, _ in rows:
        seen.setdefault(u, set()).add(i)
    n_items = len({i for _, i, _ in rows})
    recs = recs_by_user(recommendation_tables(fit(name, log), top_k=4, strategy=name, run_id="r"))
    assert set(recs) == set(seen)
    for user, rows_u in recs.items():
        items = [r["item_id"] for r in rows_u]
        assert not set(items) & seen[user]
        assert len(items) == len(set(items)) == min(4, n_items - len(seen[user]))
        assert [r["rank"] for r in rows_u] == list(range(1, len(items) + 1))
        assert all(a["score"] >= b["score"] for a, b in zip(rows_u, rows_u[1:]))
        assert all(r["because_item_id"] is None or r["because_item_id"] in seen[user] for r in rows_u)
    assert len(recs["greedy"]) == 2


def test_itemknn_cosine_values_and_neighbour_pruning():
    # a: users 1,2,3; b: users 1,2; c: user 3. cos(a,b) = 2/sqrt(3*2), cos(a,c) = 1/sqrt(3), cos(b,c) = 0
    log = make_log([("1", "a", 1), ("2", "a", 1), ("3", "a", 1), ("1", "b", 1), ("2", "b", 1), ("3", "c", 1)])
    S = cosine_similarity(build_interaction_matrix(log).X).toarray()
    assert S == pytest.approx(np.array([
        [0, 2 / math.sqrt(6), 1 / math.sqrt(3)],
        [2 / math.sqrt(6), 0, 0],
        [1 / math.sqrt(3), 0, 0],
    ]), abs=1e-6)
    shrunk = cosine_similarity(build_interaction_matrix(log).X, shrink=1.0).toarray()
    assert shrunk[0, 1] == pytest.approx(2 / (math.sqrt(6) + 1), abs=1e-6)
    pruned = keep_top_neighbors(sp.csr_matrix(np.array([[0, 3, 3, 1], [2, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], float)), 2)
    assert pruned.toarray().tolist() == [[0, 3, 3, 0], [2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_ease_weights_solve_the_constrained_least_squares():
    # Steck's optimality condition: (X^T X + lambda I) B - X^T X is zero off the diagonal.
    rng = np.random.default_rng(5)
    X = sp.csr_matrix((rng.random((40, 15)) < 0.3).astype(np.float32))
    l2 = 7.0
    B = ease_weights(X, l2).astype(np.float64)
    C = (X.T @ X).toarray()
    residual = (C + l2 * np.eye(15)) @ B - C
    assert np.abs(np.diag(B)).max() == 0.0
    assert np.abs(residual - np.diag(np.diag(residual))).max() < 1e-4


def test_ease_recency_prefers_the_partner_of_the_newest_item():
    # Symmetric pairs (a, a2) and (b, b2); the probe saw a long ago and b just now.
    # Plain EASE cannot tell a2 from b2; with a short memory b2 must win.
    rows = [(f"ua{n}", "a", 1) for n in range(5)] + [(f"ua{n}", "a2", 2) for n in range(5)]
    rows += [(f"ub{n}", "b", 1) for n in range(5)] + [(f"ub{n}", "b2", 2) for n in range(5)]
    rows += [("probe", "a", 10), ("probe", "b", 20)]
    log = make_log(rows)
    matrix = build_interaction_matrix(log)
    probe = matrix.user_codes(["probe"])
    a2, b2 = matrix.item_codes(["a2", "b2"])
    plain = fit("ease", log, l2=1.0).scores(probe)[0]
    assert plain[a2] == pytest.approx(plain[b2], rel=1e-5) and plain[b2] > 0
    for tau in (1.0, 3.0):
        recent = fit("ease-recency", log, l2=1.0, tau=tau)
        assert recent.scores(probe)[0][b2] > 1.2 * recent.scores(probe)[0][a2]
        recs = recs_by_user(recommendation_tables(recent, top_k=2, strategy="ease-recency", run_id="r"))
        assert [(r["item_id"], r["because_item_id"]) for r in recs["probe"]] == [("b2", "b"), ("a2", "a")]
    same = fit("ease-recency", log, l2=1.0, tau=math.inf).scores(probe)[0]
    assert same == pytest.approx(plain)


def test_ease_size_guard_names_items_memory_and_limit():
    with pytest.raises(ConfigError) as err:
        ease_weights(sp.csr_matrix((1, 25_000), dtype=np.float32), 100.0)
    # 25,000^2 cells x 20 bytes = 11.64 GiB; the limit is 8 GiB (20,724 items).
    message = str(err.value)
    assert "25,000 items would need 11.6 GiB" in message
    assert "limit of 8.0 GiB (20,724 items)" in message and "itemknn" in message
    check_ease_size(20_724)  # at the limit: allowed


# -- tuning ------------------------------------------------------------------------------


def recency_split() -> tuple[pa.Table, pa.Table]:
    """Three groups of two pairs; each probe saw the old pair's first item, then the new
    pair's; its valid item is the new pair's partner. The old pair has twice the support,
    so without recency its partner outranks the answer."""
    train, valid = [], []
    groups = [("p0", "q0"), ("p1", "q1"), ("p2", "q2")]
    for g, (old, new) in enumerate(groups):
        # The old pair has more support, so plain EASE ranks its partner first (no tie).
        train += [(f"o{g}-{n}", item, t) for n in range(8) for item, t in ((old, 1), (f"{old}x", 2))]
        train += [(f"n{g}-{n}", item, t) for n in range(4) for item, t in ((new, 1), (f"{new}x", 2))]
        for n in range(3):
            train += [(f"probe{g}-{n}", old, 10), (f"probe{g}-{n}", new, 20)]
            valid += [(f"probe{g}-{n}", f"{new}x", 30)]
    valid += [("stranger", "p0", 40)]  # no training history: cannot be scored, left out
    return make_log(train), make_log(valid)


def test_tuning_picks_the_recency_that_the_valid_set_rewards():
    train, valid = recency_split()
    matrix = build_interaction_matrix(train)
    result = tune(get_baseline("ease-recency"), matrix, valid, top_k=5,
                  grid={"l2": [1.0], "tau": [math.inf, 1.0]})
    assert result.best_params == {"l2": 1.0, "tau": 1.0}
    by_tau = {s["params"]["tau"]: s[METRIC] for s in result.scores}
    # With tau=1 every probe's answer is first (NDCG 1); with inf it comes second: 1/log2(3).
    assert by_tau[1.0] == pytest.approx(1.0) and by_tau[math.inf] == pytest.approx(1 / math.log2(3))
    assert result.users == 9 and result.cold_users == 1
    manifest = result.to_manifest()
    assert manifest["metric"] == "ndcg@10" and manifest["best"] == {"l2": 1.0, "tau": 1.0}
    assert [g["params"]["tau"] for g in manifest["grid"]] == ["inf", 1.0]  # JSON has no infinity


def test_tuning_ties_go_to_the_first_grid_point_and_grids_expand_over_defaults():
    train, valid = recency_split()
    result = tune(get_baseline("ease-recency"), build_interaction_matrix(train), valid,
                  grid={"l2": [1.0], "tau": [1.0, 2.0]})  # both rank every answer first
    assert result.scores[0][METRIC] == result.scores[1][METRIC] == pytest.approx(1.0)
    assert result.best_params["tau"] == 1.0
    points = grid_points(get_baseline("itemknn"))
    assert points[0] == {"neighbors": 20, "shrink": 0.0} and points[-1]["neighbors"] is None
    ease_points = grid_points(get_baseline("ease-recency"))
    assert len(ease_points) == len({(p["l2"], p["tau"]) for p in ease_points})
    assert grid_points(get_baseline("popularity")) == []


def test_tuning_users_are_scored_on_new_items_only():
    train, valid = recency_split()
    # A valid repeat of a train item is no positive; an item unknown to train still counts.
    extra = make_log([("probe0-0", "p0", 50), ("probe1-0", "brand-new", 50)])
    result = tune(get_baseline("ease-recency"), build_interaction_matrix(train), pa.concat_tables([valid, extra]),
                  grid={"l2": [1.0], "tau": [1.0]})
    # probe1-0 now has 2 positives, one unreachable: NDCG = 1 / (1 + 1/log2(3)); the rest 1.
    expected = (8 + 1 / (1 + 1 / math.log2(3))) / 9
    assert result.scores[0][METRIC] == pytest.approx(expected)


# -- the job -----------------------------------------------------------------------------


def read_dir(path: str) -> pa.Table:
    return pads.dataset(path, format="parquet").to_table()


def write_split(tmp_path, train: pa.Table, valid: pa.Table) -> tuple[TableInput, TableInput]:
    t, v = tmp_path / "train.parquet", tmp_path / "valid.parquet"
    write_parquet(t, train.to_pydict())
    write_parquet(v, valid.to_pydict())
    return TableInput(path=str(t)), TableInput(path=str(v))


def test_run_baseline_ease_end_to_end(tmp_path):
    train, valid = recency_split()
    bad = pa.table({"user_id": pa.array([None, "ghost"], pa.string()), "item_id": ["p0", "p1"],
                    "timestamp": pa.array([5, None], pa.int64())})  # null id; ghost's only row has no time
    train_in, valid_in = write_split(tmp_path, pa.concat_tables([train, bad]), valid)
    result = run_baseline("ease", train=train_in, valid=valid_in, output=str(tmp_path / "out"), top_k=3,
                          run_id="ease-1")
    assert read_latest(str(tmp_path / "out")) == str(tmp_path / "out") + "/runs/ease-1" == result.run_dir
    recs = read_dir(os.path.join(result.run_dir, "recommendations"))
    assert recs.schema.equals(schemas.RECOMMENDATIONS)
    manifest = json.loads(open(os.path.join(result.run_dir, "manifest.json")).read())
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["outputs"]["recommendations"] == recs.num_rows
    rejects = read_dir(os.path.join(result.run_dir, "rejects"))
    assert manifest["outputs"]["rejects"] == rejects.num_rows == manifest["rejects"]["total"] == 2
    assert manifest["rejects"]["by_source"] == {"train": 2, "valid": 0}
    assert manifest["rejects"]["by_reason"] == {"null id": 1, "null timestamp": 1}

    # Every user of train + valid is covered, with K rows, nothing they interacted with.
    seen: dict[str, set[str]] = {}
    for r in pa.concat_tables([train, valid]).to_pylist():
        seen.setdefault(r["user_id"], set()).add(r["item_id"])
    by_user = {}
    for r in recs.to_pylist():
        by_user.setdefault(r["user_id"], []).append(r)
    assert set(by_user) == set(seen) | {"ghost"}
    for user, rows in by_user.items():
        assert len(rows) == 3 and not {r["item_id"] for r in rows} & seen.get(user, set())
    assert {r["strategy"] for r in by_user["ghost"]} == {"popularity"}  # every row of its rejected
    assert {r["strategy"] for u, rows in by_user.items() if u != "ghost" for r in rows} == {"ease"}
    assert manifest["users"] == {"covered": len(seen) + 1, "with_history": len(seen), "popularity_fallback": 1}

    b = manifest["baseline"]
    assert b["name"] == "ease" and b["tuning"]["metric"] == "ndcg@10"
    assert [g["params"]["l2"] for g in b["tuning"]["grid"]] == [p["l2"] for p in grid_points(get_baseline("ease"))]
    best = max(b["tuning"]["grid"], key=lambda g: g["ndcg@10"])
    assert b["params"] == best["params"] == b["tuning"]["best"]
    assert manifest["config"]["inputs"]["interactions"]["path"] == [train_in.path, valid_in.path]
    assert manifest["inputs"]["interactions"]["valid"] == train.num_rows + valid.num_rows
    assert manifest["top_k"] == 3 and manifest["run_id"] == "ease-1"
    assert [s["name"] for s in manifest["stages"]] == ["read+validate", "tune", "fit", "recommend", "publish"]
    assert "numpy" in manifest["versions"]


def test_run_baseline_given_params_skip_tuning_and_popularity_has_none(tmp_path):
    train, valid = recency_split()
    train_in, valid_in = write_split(tmp_path, train, valid)
    r = run_baseline("ease-recency", train=train_in, valid=valid_in, output=str(tmp_path / "out"),
                     top_k=2, params={"tau": "inf"})
    assert r.manifest["baseline"]["tuning"] == "given"
    assert r.manifest["baseline"]["params"] == {"l2": 400.0, "tau": "inf"}
    p = run_baseline("popularity", train=train_in, valid=None, output=str(tmp_path / "out"), top_k=2)
    assert p.manifest["baseline"] == {"name": "popularity", "params": {}, "tuning": "defaults"}
    assert read_latest(str(tmp_path / "out")) == p.run_dir


def test_run_baseline_errors(tmp_path):
    train, valid = recency_split()
    train_in, valid_in = write_split(tmp_path, train, valid)
    with pytest.raises(ConfigError, match=r"unknown baseline 'svd'; choose one of \['content', 'ease', "
                                          r"'ease-recency', 'itemknn', 'lowrank-recency', 'popularity', 'sasrec'\]"):
        run_baseline("svd", train=train_in, valid=None, output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"'ease' has no parameter 'tau'; its parameters: \['l2'\]"):
        run_baseline("ease", train=train_in, valid=None, output=str(tmp_path / "out"), params={"tau": 1})
    with pytest.raises(ConfigError, match=r"parameter 'neighbors' must be an integer >= 1, or 'all', got 0"):
        run_baseline("itemknn", train=train_in, valid=None, output=str(tmp_path / "out"), params={"neighbors": 0})
    empty = tmp_path / "empty.parquet"
    pq.write_table(make_log([]), empty)
    with pytest.raises(InputDataError, match=rf"file {re.escape(str(empty))}: the train log has no valid interactions"):
        run_baseline("ease", train=TableInput(path=str(empty)), valid=valid_in, output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="needs the items table"):
        run_baseline("content", train=train_in, valid=None, output=str(tmp_path / "out"))
    assert read_latest(str(tmp_path / "out")) is None
    assert set(BASELINES) == {"popularity", "itemknn", "ease", "ease-recency", "lowrank-recency", "sasrec", "content"}


def test_recommend_codes_match_the_published_rows():
    model = fit("itemknn", pairs_log(), neighbors=1)
    codes = recommend_codes(model, np.arange(model.matrix.n_users), 2)  # (n_users, 2)
    recs = recs_by_user(recommendation_tables(model, top_k=2, strategy="itemknn", run_id="r"))
    for u, user in enumerate(model.matrix.user_ids):
        assert [r["item_id"] for r in recs[user]] == [model.matrix.item_ids[c] for c in codes[u] if c >= 0]


@pytest.mark.slow  # ~22 s on 2 cores: Ray start-up plus the tiny encoder's actors
def test_content_baseline_is_chatrecs_own_pipeline(ray_cluster, tiny_model_dir, tmp_path):
    paths = make_toy_catalogue(tmp_path)
    valid = write_parquet(tmp_path / "valid.parquet", [{"user_id": "u1", "item_id": "b1", "timestamp": 300}])
    cfg = load_config(None, {
        "inputs": {"items": str(paths["items"]), "interactions": "ignored.parquet"},
        "encoder": {"model": str(tiny_model_dir), "max_length": 32},
    })
    result = run_baseline("content", train=TableInput(path=str(paths["interactions"])),
                          valid=TableInput(path=str(valid)), output=str(tmp_path / "out"), top_k=3,
                          run_id="content-1", config=cfg)
    assert result.baseline == "content" and result.params == "defaults"
    assert result.manifest["baseline"]["name"] == "content"  # evaluate names the run by it
    assert read_latest(str(tmp_path / "out")) == result.run_dir
    assert result.manifest["config"]["inputs"]["interactions"]["path"] == [str(paths["interactions"]), str(valid)]
    recs = recs_by_user([read_dir(os.path.join(result.run_dir, "recommendations"))])
    assert {r["strategy"] for rows in recs.values() for r in rows} == {"content"}
    assert not {r["item_id"] for r in recs["u1"]} & {"a1", "b1"}  # valid's b1 is excluded too
    assert {u: len(rows) for u, rows in recs.items()} == {"u1": 3, "u2": 3, "u3": 3, "u4": 3}
