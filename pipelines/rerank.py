"""The rerank stage (Chat-Rec): a language model reorders each user's top-N candidates.

Runs after top-K (which wrote N = rerank.candidates rows per user to a work table) and
before publish:

    1. read the candidates; pick users (rerank.users), in hash order
    2. render each picked user's prompt (profile, recent history, numbered candidates with
       their item text), tokenize it, admit users while the token budget lasts
    3. generate: Ray Data engine actors (transformers on CPU/GPU, or vLLM via ray.data.llm)
    4. parse every answer strictly; anything unusable falls back to the top-K order; check
       every explanation against the item's facts (chatrec.rerank.grounding): one that names
       anything else is replaced by the row's template reason
    5. write recommendations (top K per user, with `explanation`) and rerank_status

Every user with candidates gets exactly min(K, N) valid, distinct candidates and one status
row, whatever the model answers; the stats returned for the manifest count them all.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from chatrec import schemas
from chatrec.catalogue import ItemCatalogue
from chatrec.config import RerankConfig
from chatrec.progress import ProgressCounter, counted
from chatrec.rerank import parsing
from chatrec.rerank.engines import (
    ANSWERS,
    HFGenerator,
    TokenizerView,
    answer_schema_json,
    batch_size,
    build_vllm_processor,
    choose_engine,
    model_identity,
    model_location,
    vllm_answers,
)
from chatrec.rerank.grounding import ECHO, Grounding, echoes
from chatrec.rerank.prompt import (
    Candidate,
    Template,
    answer_schema,
    clip,
    load_template,
    render_explain_prompt,
    render_prompt,
)
from chatrec.rerank.selection import select_users
from chatrec.rerank.stats import stage_stats
from chatrec.runtime import cluster_resources, rerank_plan
from chatrec.sources import filesystem_for
from pipelines.recommend import write_by_bucket

logger = logging.getLogger(__name__)

# Prompts per Ray Data block: a few batches each, so every actor gets work and a slow
# block does not hold the stage's tail for long.
BATCHES_PER_BLOCK = 4
# An explanation is one sentence: about 25 tokens; 48 leave room without letting it ramble.
EXPLAIN_NEW_TOKENS = 48
EXPLAIN_TEMPLATE = "explain-v1"


def max_new_tokens(cfg: RerankConfig, top_k: int) -> int:
    return 32 * top_k + 64 if cfg.max_new_tokens == "auto" else cfg.max_new_tokens


def rerank_stage(
    *,
    candidates_path: str,
    out_path: str,
    status_path: str,
    catalogue: ItemCatalogue,
    histories: pa.Table | str,
    users: pa.Table | None,
    item_text: pa.Table | None,
    cfg: RerankConfig,
    top_k: int,
    run_id: str,
    buckets: int = 1,
    engine: type | None = None,
    engine_kwargs: dict[str, Any] | None = None,
    progress: ProgressCounter | None = None,
) -> dict:
    """Rerank the candidates at `candidates_path` (schemas.RECOMMENDATIONS, N rows per user)
    into the top `top_k` at `out_path` (the same schema, `explanation` filled where the model
    placed the item) and write one schemas.RERANK_STATUS row per user to `status_path`.

    `histories` (schemas.HISTORIES, or the path of the run's histories work table) give
    recent items and profiles; `users` (schemas.USERS)
    profiles and segments; `item_text` (schemas.ITEM_TEXT) the candidates' text (titles and
    categories without it). `engine` replaces the configured engine with another Ray Data
    callable class taking `user_id`, `prompt_ids` and giving engines.ANSWERS (tests pass a
    scripted one), constructed with `engine_kwargs`. `out_path` is partitioned by user bucket
    (`buckets` of them, pipelines.recommend.write_by_bucket). Returns the manifest's "rerank"
    section.
    """
    started = time.perf_counter()
    template = load_template(cfg.template)
    spec = model_location(cfg.model)
    tokens_view = TokenizerView(spec)
    new_tokens = max_new_tokens(cfg, top_k)
    resources = cluster_resources()
    engine_name = "custom" if engine is not None else choose_engine(cfg, resources)
    plan = rerank_plan(cfg, resources) if engine_name != "vllm" else None
    fingerprint = model_identity(spec)
    # vLLM: one engine per GPU (tensor parallel 1), as the encoder has one actor per GPU.
    engines = resources.gpus if cfg.num_actors == "auto" else cfg.num_actors

    # 1. Candidates and users
    candidates = _read_candidates(candidates_path)
    user_ids = candidates["user_id"].unique(maintain_order=True).to_list()
    selected = select_users(user_ids, cfg.users, seed=cfg.seed, users_table=users)
    texts = _texts_by_item(item_text)
    row_of = {item_id: i for i, item_id in enumerate(catalogue.item_ids)}
    lists = _candidate_lists(candidates, set(selected), catalogue, texts, row_of, cfg.item_chars)

    # 2. Prompts, tokens, budget
    if isinstance(histories, str):
        histories = _read_histories(histories, selected)
    context = _PromptContext(catalogue, histories, users, cfg.history_items)
    outcomes: dict[str, parsing.Reranked] = {}
    prompted: list[tuple[str, np.ndarray]] = []
    spent = 0
    for position, user in enumerate(selected):
        cands = lists[user]
        if not cands:
            outcomes[user] = parsing.unchanged(0, top_k, status=parsing.FALLBACK, reason=parsing.NO_CANDIDATES)
            continue
        message = render_prompt(template, profile=context.profile(user), history=context.history(user),
                                candidates=cands, k=top_k)
        ids = np.asarray(tokens_view.encode(message), dtype=np.int32)
        if tokens_view.context_length is not None and len(ids) + new_tokens > tokens_view.context_length:
            outcomes[user] = parsing.unchanged(len(cands), top_k, status=parsing.FALLBACK, reason=parsing.TOO_LONG)
            continue
        cost = len(ids) + new_tokens
        if cfg.token_budget is not None and spent + cost > cfg.token_budget:
            # Admission stops at the first user who does not fit: the rest are over budget too.
            for later in selected[position:]:
                outcomes.setdefault(later, parsing.unchanged(
                    len(lists[later]), top_k, status=parsing.NOT_SELECTED, reason=parsing.OVER_BUDGET))
            break
        spent += cost
        prompted.append((user, ids))

    # 3. Generate
    logger.info("rerank: %d users, %d selected, %d prompted (%d tokens admitted); engine %s, model %s",
                len(user_ids), len(selected), len(prompted), spent, engine_name, cfg.model)
    gen_started = time.perf_counter()
    generate = dict(engine=engine, engine_kwargs=engine_kwargs, engine_name=engine_name, cfg=cfg, plan=plan,
                    spec=spec, fingerprint=fingerprint, engines=engines, context_length=tokens_view.context_length)
    answers = _generate(prompted, {u: answer_schema_json(answer_schema(len(lists[u]), top_k)) for u, _ in prompted},
                        new_tokens=new_tokens, progress=progress, **generate)
    gen_seconds = time.perf_counter() - gen_started

    # 4. Parse
    tokens: dict[str, tuple[int, int]] = {}
    for row in answers.to_pylist():
        user = row["user_id"]
        tokens[user] = (row["tokens_in"], row["tokens_out"])
        if row["error"]:
            outcomes[user] = parsing.unchanged(len(lists[user]), top_k, status=parsing.FALLBACK,
                                               reason=parsing.ENGINE_ERROR)
        else:
            outcomes[user] = parsing.parse_answer(row["answer"], lists[user], top_k)
    for user in user_ids:
        outcomes.setdefault(user, None)  # not selected: the top-K order as it is

    # 4b. One sentence each for the top items the answer left unexplained, then the check
    explain_started = time.perf_counter()
    explain_template = load_template(EXPLAIN_TEMPLATE)
    asks = _explain_prompts({u: outcomes[u] for u, _ in prompted}, lists, candidates, catalogue, texts, row_of,
                            explain_template, cfg, tokens_view) if cfg.explain_items else []
    # The token budget covers these prompts too, admitted in order after the rerank prompts.
    admitted = explain_spent = 0
    for _, ids in asks:
        cost = len(ids) + EXPLAIN_NEW_TOKENS
        if cfg.token_budget is not None and spent + explain_spent + cost > cfg.token_budget:
            break
        explain_spent, admitted = explain_spent + cost, admitted + 1
    over_budget, asks = len(asks) - admitted, asks[:admitted]
    sentences = _generate(asks, {key: None for key, _ in asks}, new_tokens=EXPLAIN_NEW_TOKENS, **generate)
    explained = _add_sentences(outcomes, sentences)
    explain = {
        "template": {"name": explain_template.name, "sha256": explain_template.sha256,
                     "version": explain_template.version},
        "prompts": len(asks), "over_budget": over_budget, "admitted": explain_spent,
        "tokens_in": int(sum(len(ids) for _, ids in asks)),
        "tokens_out": int(pc.sum(sentences.column("tokens_out")).as_py() or 0),
        "seconds": round(time.perf_counter() - explain_started, 3),
    }
    explanations = _ground(outcomes, candidates, catalogue, texts, row_of, explained, explain_template.text)

    # 5. Outputs
    status = _status_table(user_ids, outcomes, tokens)
    _write_table(status, status_path)
    _apply(candidates_path, out_path, outcomes, top_k, buckets)
    return stage_stats(cfg, status, template=template, fingerprint=fingerprint, engine=engine_name, plan=plan,
                       top_k=top_k, new_tokens=new_tokens, selected=len(selected), prompted=len(prompted),
                       spent=spent, gen_seconds=gen_seconds, context_length=tokens_view.context_length,
                       explanations=explanations, explain=explain, seconds=time.perf_counter() - started)


def _read_candidates(path: str) -> pl.DataFrame:
    fs, inner = filesystem_for(path)
    table = pads.dataset(inner, filesystem=fs, format="parquet").to_table(
        columns=["user_id", "rank", "item_id", "because_item_id", "reason"])
    df = pl.from_arrow(table).sort(["user_id", "rank"])
    # Positions in a user's list and ranks are used interchangeably below.
    gaps = df.filter(pl.col("rank") != pl.int_range(1, pl.len() + 1).over("user_id"))
    if gaps.height:
        raise RuntimeError(f"candidate ranks of user {gaps['user_id'][0]!r} are not 1..N")  # internal bug
    return df


def _candidate_lists(candidates: pl.DataFrame, selected: set[str], catalogue: ItemCatalogue,
                     texts: dict[str, str], row_of: dict[str, int], chars: int) -> dict[str, list[Candidate]]:
    """Each user's candidates in the top-K order, as the prompt shows them. Users not
    selected get their ranks only (the parser never sees them)."""
    lists: dict[str, list[Candidate]] = {}
    for user, group in candidates.group_by("user_id", maintain_order=True):
        user = user[0]
        items = group["item_id"].to_list()
        if user not in selected:
            lists[user] = [Candidate(i, "", "") for i in items]
            continue
        out = []
        for item in items:
            row = row_of[item]
            out.append(Candidate(item_id=item, title=catalogue.display_titles[row],
                                 text=_item_text(texts, catalogue, row, chars)))
        lists[user] = out
    return lists


def _texts_by_item(item_text: pa.Table | None) -> dict[str, str]:
    if item_text is None:
        return {}
    return dict(zip(item_text.column("item_id").to_pylist(), item_text.column("text").to_pylist()))


def _item_text(texts: dict[str, str], catalogue: ItemCatalogue, row: int, chars: int) -> str:
    """An item as prompts show it: its item text, or its title and categories without one."""
    title = catalogue.display_titles[row]
    text = texts.get(catalogue.item_ids[row]) or ". ".join([title, ", ".join(sorted(catalogue.categories[row]))]).rstrip(". ")
    return clip(text, chars)


def _explain_prompts(outcomes: dict[str, parsing.Reranked | None], lists: dict[str, list[Candidate]],
                     candidates: pl.DataFrame, catalogue: ItemCatalogue, texts: dict[str, str],
                     row_of: dict[str, int], template: Template, cfg: RerankConfig,
                     tokens_view: TokenizerView) -> list[tuple[str, np.ndarray]]:
    """(key "user<TAB>position", token ids) of the explain-v1 prompt for each of the first
    `cfg.explain_items` slots of each user's list (`outcomes`: the prompted users') that has
    no explanation yet."""
    because_of = {(u, r - 1): b for u, r, b in candidates.select("user_id", "rank", "because_item_id").iter_rows()}
    asks = []
    for user, outcome in outcomes.items():
        if not lists.get(user):
            continue
        for slot, (position, sentence) in enumerate(zip(outcome.order, outcome.explanations)):
            if slot >= cfg.explain_items:
                break
            if sentence is not None:
                continue
            because = because_of.get((user, position))
            because_text = (_item_text(texts, catalogue, row_of[because], cfg.item_chars)
                            if because is not None and because in row_of else None)
            message = render_explain_prompt(template, item=lists[user][position].text, because=because_text)
            asks.append((f"{user}\t{position}", np.asarray(tokens_view.encode(message), dtype=np.int32)))
    return asks


def _add_sentences(outcomes: dict[str, parsing.Reranked | None], answers: pa.Table) -> set[tuple[str, int]]:
    """The explain prompts' answers (keyed "user<TAB>position") into the users' outcomes;
    an empty or failed answer leaves the slot without one. -> the (user, position) filled."""
    filled = set()
    for key, text, error in zip(answers.column("user_id").to_pylist(), answers.column("answer").to_pylist(),
                                answers.column("error").to_pylist()):
        user, position = key.rsplit("\t", 1)
        sentence = None if error else parsing.one_sentence(text)
        if sentence is None:
            continue
        outcome = outcomes[user]
        explanations = [sentence if p == int(position) else e for p, e in zip(outcome.order, outcome.explanations)]
        outcomes[user] = dataclasses.replace(outcome, explanations=tuple(explanations))
        filled.add((user, int(position)))
    return filled


def _ground(outcomes: dict[str, parsing.Reranked | None], candidates: pl.DataFrame, catalogue: ItemCatalogue,
            texts: dict[str, str], row_of: dict[str, int], explained: set[tuple[str, int]],
            instructions: str) -> list[tuple[str, str | None]]:
    """Checks every explanation the model wrote (chatrec.rerank.grounding) against its item's
    and because-item's facts, and those of explain prompts (`explained`: (user, position))
    for echoes of the prompt; one that fails is replaced, in `outcomes`, by the row's
    template reason (`instructions`: the explain template's text). -> (explanation, failure
    code or None) for each one checked."""
    grounding = Grounding(catalogue, [texts.get(item) for item in catalogue.item_ids] if texts else None)
    checked: list[tuple[str, str | None]] = []
    wanted = {u for u, o in outcomes.items() if o is not None and any(e is not None for e in o.explanations)}
    rows = candidates.filter(pl.col("user_id").is_in(list(wanted)))
    for (user,), group in rows.group_by("user_id", maintain_order=True):
        outcome = outcomes[user]
        items, because, reasons = group["item_id"].to_list(), group["because_item_id"].to_list(), group["reason"].to_list()
        kept = []
        for position, sentence in zip(outcome.order, outcome.explanations):
            if sentence is None:
                kept.append(None)
                continue
            code = grounding.check(sentence, row_of[items[position]], row_of.get(because[position]))
            if code is None and (user, position) in explained and echoes(sentence, instructions):
                code = ECHO
            checked.append((sentence, code))
            kept.append(sentence if code is None else reasons[position])
        outcomes[user] = dataclasses.replace(outcome, explanations=tuple(kept))
    return checked


def _read_histories(path: str, user_ids: list[str]) -> pa.Table:
    """The histories of `user_ids` from the histories work table (pipelines.histories)."""
    fs, inner = filesystem_for(path)
    return pads.dataset(inner, filesystem=fs, format="parquet").to_table(
        columns=["user_id", "recent_rows", "profile_text"], filter=pads.field("user_id").isin(user_ids))


class _PromptContext:
    """Profiles and recent-history titles by user."""

    def __init__(self, catalogue: ItemCatalogue, histories: pa.Table, users: pa.Table | None, history_items: int):
        self.titles = catalogue.display_titles
        self.history_items = history_items
        ids = histories.column("user_id").to_pylist()
        self.recent = dict(zip(ids, histories.column("recent_rows").to_pylist()))
        self.profiles = dict(zip(ids, histories.column("profile_text").to_pylist()))
        if users is not None:
            for user, attributes in zip(users.column("user_id").to_pylist(), users.column("attributes").to_pylist()):
                self.profiles[user] = ". ".join(attributes or []) or None

    def profile(self, user: str) -> str | None:
        return self.profiles.get(user)

    def history(self, user: str) -> list[str]:
        rows = self.recent.get(user) or []
        return [self.titles[r] for r in rows[: self.history_items]]


def _generate(prompted, answer_schemas, *, engine, engine_kwargs, engine_name, cfg, plan, spec, fingerprint, engines,
              new_tokens, context_length, progress=None) -> pa.Table:
    """engines.ANSWERS for the prompts (key, token ids), one row each keyed by `user_id`;
    `answer_schemas` by key (a JSON schema string for vLLM's structured output, or None for
    free text). `progress` counts the answered prompts (the local engines; vLLM reports its own)."""
    if not prompted:
        return ANSWERS.empty_table()
    # Similar lengths in one batch waste little padding; the order is restored by user id.
    prompted = sorted(prompted, key=lambda p: (-len(p[1]), p[0]))
    size = batch_size(cfg, "vllm" if engine_name == "vllm" else "hf", plan)
    users = [u for u, _ in prompted]
    lengths = np.array([len(ids) for _, ids in prompted], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate([ids for _, ids in prompted]) if prompted else np.zeros(0, np.int32)
    table = pa.table({
        "user_id": pa.array(users, pa.string()),
        "prompt_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32())),
        "answer_schema": pa.array([answer_schemas[u] for u in users], pa.string()),
    })
    rows_per_block = size * BATCHES_PER_BLOCK
    ds = ray.data.from_arrow([table.slice(s, rows_per_block) for s in range(0, table.num_rows, rows_per_block)])
    if engine_name == "vllm":
        processor = build_vllm_processor(model=spec, max_new_tokens=new_tokens, batch_size=size,
                                         concurrency=max(1, engines), max_model_len=context_length)
        out = processor(ds).map_batches(vllm_answers, batch_format="pyarrow")
    else:
        cls = engine or HFGenerator
        kwargs = engine_kwargs if engine is not None else dict(
            model=spec, fingerprint=fingerprint, max_new_tokens=new_tokens, device=plan.device,
            precision=_precision(cfg, plan), num_threads=plan.threads,
        )
        out = ds.map_batches(
            **counted(cls, kwargs, progress), batch_size=size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=plan.num_actors), num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
        )
    answers = pa.concat_tables([ray.get(ref) for ref in out.to_arrow_refs()]).select(ANSWERS.names).cast(ANSWERS)
    got = answers.column("user_id").to_pylist()
    if sorted(got) != sorted(users):
        raise RuntimeError(f"the engine answered {len(got)} prompts for {len(users)} users")  # internal bug
    return answers


def _precision(cfg: RerankConfig, plan) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if plan.device == "cuda" else "fp32"


def _status_table(user_ids: list[str], outcomes: dict, tokens: dict[str, tuple[int, int]]) -> pa.Table:
    rows = []
    for user in sorted(user_ids):
        outcome = outcomes[user]
        t_in, t_out = tokens.get(user, (0, 0))
        if outcome is None:
            rows.append((user, parsing.NOT_SELECTED, parsing.NOT_SELECTED, None, 0, 0, 0))
        else:
            rows.append((user, outcome.status, outcome.reason, outcome.question, t_in, t_out, outcome.llm_items))
    columns = list(zip(*rows)) if rows else [[] for _ in schemas.RERANK_STATUS.names]
    return pa.table(dict(zip(schemas.RERANK_STATUS.names, columns)), schema=schemas.RERANK_STATUS)


def _write_table(table: pa.Table, directory: str) -> None:
    fs, inner = filesystem_for(directory)
    fs.create_dir(inner, recursive=True)
    pq.write_table(table, posixpath.join(inner, "part-00000.parquet"), filesystem=fs)


def _apply(candidates_path: str, out_path: str, outcomes: dict, top_k: int, buckets: int) -> None:
    """Candidates -> the published top K: reordered rows for users whose order changed, the
    first K for everyone else. Row by row, so it streams through Ray Data at any size."""
    changed = {}
    for user, outcome in outcomes.items():
        if outcome is not None and (outcome.llm_items or any(e is not None for e in outcome.explanations)):
            changed[user] = (
                {p + 1: slot + 1 for slot, p in enumerate(outcome.order)},  # top-K rank -> new rank
                {p + 1: e for p, e in zip(outcome.order, outcome.explanations)},
            )
    ds = ray.data.read_parquet(candidates_path, columns=schemas.RECOMMENDATIONS.names).map_batches(
        _reorder, fn_kwargs=dict(changed=ray.put(changed), top_k=top_k), batch_size=None, batch_format="pyarrow",
    )
    write_by_bucket(ds, out_path, buckets)


def _reorder(batch: pa.Table, *, changed: ray.ObjectRef | dict, top_k: int) -> pa.Table:
    """Candidate rows -> final rows (schemas.RECOMMENDATIONS), each user's in rank order."""
    changed = ray.get(changed) if isinstance(changed, ray.ObjectRef) else changed
    users = batch.column("user_id").to_pylist()
    keep, new_rank, explanation = [], [], []
    for i, (user, rank) in enumerate(zip(users, batch.column("rank").to_pylist())):
        change = changed.get(user)
        if change is None:
            if rank <= top_k:
                keep.append(i), new_rank.append(rank), explanation.append(None)
        elif rank in change[0]:
            keep.append(i), new_rank.append(change[0][rank]), explanation.append(change[1][rank])
    out = batch.take(pa.array(keep, pa.int64()))
    out = out.set_column(out.schema.get_field_index("rank"), "rank", pa.array(new_rank, pa.int32()))
    out = out.set_column(out.schema.get_field_index("explanation"), "explanation", pa.array(explanation, pa.string()))
    first: dict[str, int] = {}
    order = sorted(range(out.num_rows), key=lambda j: (first.setdefault(users[keep[j]], j), new_rank[j]))
    return out.take(pa.array(order, pa.int64())).select(schemas.RECOMMENDATIONS.names).cast(schemas.RECOMMENDATIONS)
