"""SASRec: it must learn a sequence only order explains, and keep the baseline contract.

The toy log: items 0..19 on a circle; each user walks from a start with a fixed step
(1, 2 or 3) and the next item of the walk is held out. The last item alone does not say
what comes next (x + 1, x + 2 and x + 3 are all unseen for most walks); the step, read from
the order of the items, does. A popularity list hits it by chance, recency-weighted EASE
two times in three; a model that reads the sequence in the wrong order, or reads it from
the wrong slot, hardly ever. (One that sees the
future in training still learns the last slot, the one recommendations read: that the
attention is causal is tested on the network itself.)
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import torch

from chatrec.baselines import get_baseline
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.recommend import recommend_codes, recommendation_tables
from chatrec.baselines.sasrec import item_sequences
from chatrec.baselines.sasrec_net import SASRecNet, attention_mask
from chatrec.baselines.tuning import METRIC
from chatrec.config import TableInput
from chatrec.errors import ConfigError
from tests.conftest import write_parquet

N_ITEMS = 20
STEPS = (1, 2, 3)
WALK = 6  # items per user in training; the 7th is held out
# Small and fast: 60 windows of 5 targets, 4 steps an epoch, ~10 ms a step. max_len 5 makes
# every training window and every held-out context full, so positions mean the same in both.
# One thread: tensors this small gain nothing from more, and lose a lot on a busy machine.
TOY = {"hidden": 16, "blocks": 2, "heads": 1, "dropout": 0.0, "lr": 3e-3, "batch_size": 16, "max_len": 5,
       "threads": 1}
LEARN_EPOCHS = 100  # seeds 0-3 all reach a hit rate of 0.95-1.0 by then


def make_log(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, ts = zip(*rows)
    return pa.table({"user_id": pa.array(users, pa.string()), "item_id": pa.array(items, pa.string()),
                     "timestamp": pa.array(ts, pa.int64())})


def walks() -> tuple[pa.Table, pa.Table]:
    """(train, held out): every start x step, WALK items in train and the next one held out."""
    train, held = [], []
    for start in range(N_ITEMS):
        for step in STEPS:
            user = f"u{start:02d}-{step}"
            walk = [f"i{(start + step * k) % N_ITEMS:02d}" for k in range(WALK + 1)]
            train += [(user, item, 100 + t) for t, item in enumerate(walk[:-1])]
            held.append((user, walk[-1], 100 + WALK))
    return make_log(train), make_log(held)


def fit(log: pa.Table, **params):
    baseline = get_baseline("sasrec")
    return baseline.fit(build_interaction_matrix(log), baseline.resolve_params({**TOY, **params}))


def hit_rate(model, held: pa.Table) -> float:
    """Share of users whose top-1 is their held-out item."""
    answer = dict(zip(held["user_id"].to_pylist(), held["item_id"].to_pylist()))
    m = model.matrix
    top = recommend_codes(model, np.arange(m.n_users), 1)[:, 0]  # (n_users,)
    return float(np.mean([m.item_ids[c] == answer[u] for u, c in zip(m.user_ids, top)]))


# -- sequences ---------------------------------------------------------------------------


def test_sequences_are_oldest_first_and_windows_target_every_item_once():
    # u1's timestamps tie at 5: item_id orders them as everywhere (the smaller id is newer).
    log = make_log([("u0", "c", 3), ("u0", "a", 1), ("u0", "b", 2), ("u0", "a", 4),
                    ("u1", "b", 5), ("u1", "c", 5), ("u1", "a", 1), ("u2", "b", 9)])
    m = build_interaction_matrix(log)
    seq = item_sequences(m)
    codes = {item: i for i, item in enumerate(m.item_ids)}
    # u0: a repeated counts at its newest time (4), so b, c, a.
    assert seq.items.tolist() == [codes[x] for x in "bca"] + [codes[x] for x in "acb"] + [codes["b"]]
    tokens = seq.latest(np.array([0, 2]), 4)  # (2, 4) left-padded, newest last, token = code + 1
    assert tokens.tolist() == [[0, codes["b"] + 1, codes["c"] + 1, codes["a"] + 1], [0, 0, 0, codes["b"] + 1]]

    # A 12-item user, windows of 5: ends 12, 7, 2; targets are indices 1..11, once each.
    long = make_log([("u", f"i{k:02d}", k) for k in range(12)])
    seq = item_sequences(build_interaction_matrix(long))
    users, ends = seq.windows(5)
    assert users.tolist() == [0, 0, 0] and ends.tolist() == [12, 7, 2]
    inputs, targets = seq.window_batch(users, ends, 5)  # (3, 5) each
    assert sorted(t - 1 for t in targets[targets > 0].tolist()) == list(range(1, 12))
    assert (inputs[:2, 1:] == targets[:2, :-1]).all()  # in a full window, each input is the item before its target
    assert targets[2].tolist() == [0, 0, 0, 0, 2] and inputs[2].tolist() == [0, 0, 0, 0, 1]
    assert seq.windows(5)[0].size == 3 and item_sequences(build_interaction_matrix(log)).windows(50)[0].tolist() == [0, 1]


def test_attention_reads_only_the_past_and_real_items():
    real = torch.tensor([[False, True, True], [True, True, True]])
    # Row t: which keys query t may not read. An empty slot reads only itself.
    assert attention_mask(real, heads=2).tolist() == [
        [[False, True, True], [True, False, True], [True, False, False]],
        [[False, True, True], [True, False, True], [True, False, False]],
        [[False, True, True], [False, False, True], [False, False, False]],
        [[False, True, True], [False, False, True], [False, False, False]],
    ]
    torch.manual_seed(0)
    net = SASRecNet(n_items=9, hidden=8, blocks=2, heads=2, dropout=0.0, max_len=4).eval()
    with torch.no_grad():
        base, later, earlier = (net(torch.tensor([t]))[0] for t in ([0, 3, 5, 7], [0, 3, 9, 7], [0, 4, 5, 7]))
    assert torch.equal(base[:2], later[:2]) and not torch.equal(base[2:], later[2:])  # slot 2 changed
    assert not torch.equal(base[3], earlier[3])  # the newest state reads the whole past
    assert torch.isfinite(base).all()


# -- learning ----------------------------------------------------------------------------


def test_learns_the_step_of_each_walk_where_popularity_guesses():
    train, held = walks()
    model = fit(train, epochs=LEARN_EPOCHS)
    popularity = get_baseline("popularity").fit(build_interaction_matrix(train), {})
    assert hit_rate(popularity, held) < 0.2  # 1 in 14 unseen items
    assert hit_rate(model, held) >= 0.9
    # Co-occurrence weighted by recency, at its best here, knows the neighbours of the newest
    # item but not which way the walk goes or how far it steps.
    ease = get_baseline("ease-recency")
    assert hit_rate(ease.fit(build_interaction_matrix(train), ease.resolve_params({"l2": 10, "tau": 1})), held) < 0.7


def test_never_recommends_seen_items_and_lists_every_unseen_one():
    train, _ = walks()
    model = fit(train, epochs=1)
    seen: dict[str, set[str]] = {}
    for r in train.to_pylist():
        seen.setdefault(r["user_id"], set()).add(r["item_id"])
    rows: dict[str, list[dict]] = {}
    for table in recommendation_tables(model, top_k=N_ITEMS, strategy="sasrec", run_id="r"):
        for r in table.to_pylist():
            rows.setdefault(r["user_id"], []).append(r)
    assert set(rows) == set(seen)
    for user, recs in rows.items():
        assert [r["rank"] for r in recs] == list(range(1, N_ITEMS - WALK + 1))  # every unseen item, no padding
        assert not {r["item_id"] for r in recs} & seen[user]
        assert all(r["because_item_id"] is None and r["strategy"] == "sasrec" for r in recs)


def test_same_seed_same_model_another_seed_another():
    train, _ = walks()
    users = np.arange(12)
    a, b, c = (fit(train, epochs=3, seed=s).scores(users) for s in (0, 0, 1))  # (12, n_items) each
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


# -- early stopping ----------------------------------------------------------------------


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    train, _ = walks()
    baseline = get_baseline("sasrec")
    params = baseline.resolve_params({**TOY, "max_epochs": 20, "patience": 3, "dropout": 0.1})
    script = iter([0.1, 0.3, 0.2, 0.25, 0.3, 0.9])  # best at epoch 2 (ties go to the earlier epoch)
    seen_scores = {}

    def score(model) -> float:
        seen_scores[len(seen_scores) + 1] = model.scores(np.arange(5))  # (5, n_items) at this epoch
        return next(script)

    model, stopping = baseline.fit_early_stopped(build_interaction_matrix(train), params, score)
    assert (stopping.best_epoch, stopping.epochs_run, stopping.stopped_early) == (2, 5, True)
    assert stopping.best_score == 0.3 and [h["epoch"] for h in stopping.history] == [1, 2, 3, 4, 5]
    assert np.array_equal(model.scores(np.arange(5)), seen_scores[2])  # epoch 2's weights, restored
    assert not np.array_equal(seen_scores[2], seen_scores[5])
    assert stopping.to_manifest()["best_epoch"] == 2

    # Evaluated every 2 epochs and on the last one: the patience is counted in epochs.
    script = iter([0.5, 0.4, 0.3])
    _, stopping = baseline.fit_early_stopped(build_interaction_matrix(train), {**params, "eval_every": 2,
                                                                               "max_epochs": 5}, score)
    assert [h["epoch"] for h in stopping.history] == [2, 4, 5]
    assert (stopping.best_epoch, stopping.epochs_run, stopping.stopped_early) == (2, 5, False)


# -- the job -----------------------------------------------------------------------------


def test_run_baseline_sasrec_tunes_epochs_on_valid_and_refits(tmp_path):
    from pipelines.baseline import run_baseline

    train, held = walks()
    t, v = write_parquet(tmp_path / "train.parquet", train.to_pydict()), write_parquet(tmp_path / "valid.parquet",
                                                                                       held.to_pydict())
    given = {**TOY, "max_epochs": 100, "patience": 10}
    result = run_baseline("sasrec", train=TableInput(path=str(t)), valid=TableInput(path=str(v)),
                          output=str(tmp_path / "out"), top_k=3, run_id="s1", params=given)
    manifest = json.loads(open(os.path.join(result.run_dir, "manifest.json")).read())
    b = manifest["baseline"]
    stopping = b["tuning"]["early_stopping"]
    assert b["name"] == "sasrec" and b["tuning"]["metric"] == METRIC
    assert b["params"]["epochs"] == stopping["best_epoch"] == b["tuning"]["best"]["epochs"]
    assert b["params"]["hidden"] == 16 and b["params"]["max_len"] == 5
    assert stopping["best_ndcg@10"] == max(g[METRIC] for g in b["tuning"]["grid"]) > 0.8
    assert stopping["epochs_run"] <= 100 and len(b["tuning"]["grid"]) == stopping["epochs_run"]
    assert [s["name"] for s in manifest["stages"]] == ["read+validate", "tune", "fit", "recommend", "publish"]

    # Refit on train + valid: nothing of either is recommended.
    recs = pads.dataset(os.path.join(result.run_dir, "recommendations"), format="parquet").to_table()
    seen = {(r["user_id"], r["item_id"]) for r in pa.concat_tables([train, held]).to_pylist()}
    assert recs.num_rows == 3 * len(set(train["user_id"].to_pylist()))
    assert not {(r["user_id"], r["item_id"]) for r in recs.to_pylist()} & seen

    # epochs given: no validation, trained exactly that long.
    fixed = run_baseline("sasrec", train=TableInput(path=str(t)), valid=None, output=str(tmp_path / "out"),
                         top_k=3, params={**TOY, "epochs": 2})
    assert fixed.manifest["baseline"]["tuning"] == "given" and fixed.params["epochs"] == 2


def test_parameter_errors_name_the_rule(tmp_path):
    from pipelines.baseline import run_baseline

    t = write_parquet(tmp_path / "train.parquet", walks()[0].to_pydict())
    with pytest.raises(ConfigError, match=r"'sasrec' chooses its epoch count on a validation log: pass valid"):
        run_baseline("sasrec", train=TableInput(path=str(t)), valid=None, output=str(tmp_path / "out"))
    sasrec = get_baseline("sasrec")
    with pytest.raises(ConfigError, match=r"'hidden' must be a multiple of 'heads' .* got hidden=64, heads=3"):
        sasrec.resolve_params({"heads": "3"})
    with pytest.raises(ConfigError, match=r"'dropout' must be < 1, got 1.0"):
        sasrec.resolve_params({"dropout": 1})
    with pytest.raises(ConfigError, match=r"parameter 'epochs' must be an integer >= 1, or 'valid', got '0'"):
        sasrec.resolve_params({"epochs": "0"})
    assert sasrec.resolve_params({"epochs": "valid", "threads": "auto"})["epochs"] is None
