"""The full job: inputs in, published top-K recommendations out.

    1. connect to Ray and plan the actor pools
    2. read and validate inputs (rejects kept)
    3. render item texts
    4. embed items (Ray Data encoder actors)
    5. build user histories
    6. embed users (Ray Data user-tower actors)
    7. top-K with exclusions and reasons (Ray Data FAISS actors), popularity fallback
    8. write rejects and manifest, then publish atomically
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch
from transformers import AutoConfig

from chatrec import schemas
from chatrec.catalogue import build_catalogue
from chatrec.config import ChatrecConfig
from chatrec.errors import InputDataError
from chatrec.encoder import count_truncated, fixed_size_list_to_numpy, to_fixed_size_list
from chatrec.histories import build_histories, item_popularity
from chatrec.item_text import TEMPLATE_VERSION
from chatrec.manifest import library_versions, new_run_id, utc_now
from chatrec.model_loading import model_fingerprint, resolve_model_dir
from chatrec.publish import WORK_DIR, RunOutput
from chatrec.recommender import popularity_rows
from chatrec.retrieval import ExactIndex
from chatrec.matcher.user_tower import MatcherUserEncoder
from chatrec.runtime import connect, encoder_plan, encoder_precision, retrieval_plan, trainer_plan, user_plan
from chatrec.user_vectors import RecencyMeanUserEncoder
from chatrec.stage_metrics import StageClock
from chatrec.validation import reject_counts_by_kind
from pipelines.embed_items import embed_items
from pipelines.embed_users import embed_users
from pipelines.ingest import item_texts, read_inputs
from pipelines.recommend import recommend
from pipelines.train_matcher import MatcherArtifacts, matcher_artifacts, train_matcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: str  # where the published run lives
    manifest: dict


def _read_embeddings(output: RunOutput, name: str, key: str) -> tuple[list[str], np.ndarray]:
    table = output.dataset(name).to_table(columns=[key, "embedding"]).sort_by(key)
    return table.column(key).to_pylist(), fixed_size_list_to_numpy(table.column("embedding"))


def run_job(cfg: ChatrecConfig, *, baseline: str | None = None) -> RunResult:
    """Run the whole job on `cfg` and publish it. `baseline` names the run in its manifest
    when it serves as an evaluation baseline (`chatrec baseline content`)."""
    started = time.perf_counter()
    clock = StageClock()
    run_id = cfg.output.run_id or new_run_id()

    # 1. Ray and the actor pools
    resources = connect(cfg.ray)
    enc_plan = encoder_plan(cfg.encoder, resources)
    precision = encoder_precision(cfg.encoder, enc_plan)
    topk_plan = retrieval_plan(cfg.retrieval, resources)
    logger.info(
        "cluster: %d CPUs, %d GPUs on %d node(s); encoder %s, %s; top-K %s",
        resources.cpus, resources.gpus, resources.nodes, enc_plan.describe(), precision, topk_plan.describe(),
    )
    model_dir = resolve_model_dir(cfg.encoder.model)
    fingerprint = model_fingerprint(model_dir)
    output = RunOutput(cfg.output.path, run_id)
    output.prepare()

    # 2. Read and validate
    with clock.stage("read+validate", "rows") as m:
        inputs = read_inputs(cfg.inputs, cfg.item_text)
        m.rows = inputs.items.rows_read + inputs.interactions.rows_read + (inputs.users.rows_read if inputs.users else 0)
        rejects = inputs.rejects()
        m.detail = f"{rejects.num_rows} rejected"
    if inputs.items.table.num_rows == 0:
        raise InputDataError("no valid items: every row was rejected (see the rejects)", source=cfg.inputs.items.display)

    # 3. Item text
    with clock.stage("item-text", "items") as m:
        texts = item_texts(inputs, cfg.item_text)
        truncated = count_truncated(cfg.encoder.model, texts.column("text").to_pylist(), cfg.encoder.max_length)
        m.rows = texts.num_rows
        m.detail = f"{truncated} truncated to {cfg.encoder.max_length} tokens"

    # 4. Item embeddings
    dim = int(AutoConfig.from_pretrained(model_dir).hidden_size)
    with clock.stage("embed-items", "items") as m:
        embed_items(
            texts, encoder=cfg.encoder, plan=enc_plan, precision=precision,
            fingerprint=fingerprint, dim=dim, out_path=output.path("item_embeddings"),
        )
        item_ids, vectors = _read_embeddings(output, "item_embeddings", "item_id")
        m.rows = len(item_ids)
    if item_ids != texts.column("item_id").to_pylist():
        raise RuntimeError("item embeddings do not cover the catalogue one-to-one")  # internal bug
    # 4b. The matcher: trained on the log, its item tower replaces the text vectors for scoring
    matcher = None
    if cfg.matcher.enabled:
        matcher = _train_matcher(cfg, clock, resources, output, run_id, vectors, item_ids,
                                 pl.from_arrow(inputs.interactions.table))
        vectors = matcher.item_vectors
    catalogue = build_catalogue(inputs.items.table, vectors, inputs.knowledge)
    catalogue_ref = ray.put(catalogue)
    index_ref = ray.put(ExactIndex.build(vectors).to_bytes())

    # 5. Histories
    with clock.stage("histories", "users") as m:
        extra_users = inputs.log_user_ids
        if inputs.users is not None:
            extra_users = pa.concat_arrays([extra_users, inputs.users.table.column("user_id").combine_chunks()])
        population = build_histories(
            inputs.interactions.table, texts, max_items=cfg.history.max_items, extra_user_ids=extra_users,
            users=inputs.users.table if inputs.users is not None else None,
        )
        m.rows = population.histories.num_rows + len(population.fallback_user_ids)
        m.detail = f"{len(population.fallback_user_ids)} without usable history"

    # 6. User embeddings
    with clock.stage("embed-users", "users") as m:
        # Profiles need the text encoder in the user actors (and its GPU, if it has one).
        profiles = cfg.history.profile_weight > 0 and inputs.users is not None
        text_encoder = dict(
            model=cfg.encoder.model, fingerprint=fingerprint, max_length=cfg.encoder.max_length,
            batch_size=cfg.encoder.batch_size, device=enc_plan.device, precision=precision,
            num_threads=enc_plan.threads,
        ) if profiles else None
        if matcher is not None:
            tower, tower_kwargs = MatcherUserEncoder, dict(
                catalogue=catalogue_ref, matcher=ray.put(matcher.user_tower), threads=user_plan(resources).threads
            )
        else:
            tower, tower_kwargs = RecencyMeanUserEncoder, dict(
                catalogue=catalogue_ref, half_life=cfg.history.half_life,
                profile_weight=cfg.history.profile_weight if profiles else 0.0, text_encoder=text_encoder,
            )
        if population.histories.num_rows:
            embed_users(
                population.histories, tower=tower, tower_kwargs=tower_kwargs, dim=catalogue.dim,
                plan=enc_plan if profiles and matcher is None else user_plan(resources),
                work_path=output.path(f"{WORK_DIR}/user_vectors"), out_path=output.path("user_embeddings"),
            )
        m.rows = population.histories.num_rows

    # 7. Top-K, reasons, fallback
    with clock.stage("top-k", "users") as m:
        if population.histories.num_rows:
            recommend(
                user_vectors_path=output.path(f"{WORK_DIR}/user_vectors"), index_ref=index_ref,
                catalogue_ref=catalogue_ref, retrieval=cfg.retrieval, plan=topk_plan, run_id=run_id,
                out_path=output.path("recommendations"), strategy="two-tower" if matcher else "content",
                fusion=ray.put(matcher.fusion) if matcher is not None and matcher.fusion else None,
            )
        fallback = population.fallback_user_ids.to_pylist()
        if fallback:
            popularity = item_popularity(inputs.interactions.table, texts)
            output.write_table(
                "recommendations",
                popularity_rows(fallback, popularity, top_k=cfg.retrieval.top_k, run_id=run_id),
                file_name="popularity-fallback.parquet",
            )
        m.rows = population.histories.num_rows + len(fallback)

    # 8. Rejects, manifest, publish
    with clock.stage("publish", "tables") as m:
        if rejects.num_rows:
            output.write_table("rejects", rejects)
        output.ensure_table("rejects", schemas.REJECTS)
        output.ensure_table("recommendations", schemas.RECOMMENDATIONS)
        output.ensure_table("user_embeddings", schemas.user_embeddings(catalogue.dim))
        counts = {
            name: output.count_rows(name)
            for name in ("recommendations", "item_embeddings", "user_embeddings", "rejects")
        }
        manifest = {
            "run_id": run_id,
            "created_at": utc_now(),
            **({"baseline": {"name": baseline, "params": {}, "tuning": "defaults"}} if baseline else {}),
            "config": cfg.to_dict(),
            "config_sha256": cfg.sha256(),
            "model": {
                "spec": cfg.encoder.model,
                "fingerprint": fingerprint,
                "dim": dim,
                "max_length": cfg.encoder.max_length,
                "precision": precision,
            },
            "item_text_template": TEMPLATE_VERSION,
            "matcher": matcher.manifest if matcher is not None else None,
            "top_k": cfg.retrieval.top_k,
            "inputs": {
                "items": {"rows": inputs.items.rows_read, "valid": inputs.items.table.num_rows},
                "interactions": {"rows": inputs.interactions.rows_read, "valid": inputs.interactions.table.num_rows},
                **(
                    {"users": {"rows": inputs.users.rows_read, "valid": inputs.users.table.num_rows}}
                    if inputs.users is not None else {}
                ),
                **(
                    {"knowledge_graph": {"item_facts_used": inputs.knowledge.triples_used}}
                    if inputs.knowledge is not None else {}
                ),
            },
            "rejects": {"total": rejects.num_rows, "by_source": inputs.reject_counts(),
                        "by_reason": reject_counts_by_kind(rejects)},
            "items_truncated": truncated,
            "users": {
                "covered": population.histories.num_rows + len(fallback),
                "with_history": population.histories.num_rows,
                "popularity_fallback": len(fallback),
            },
            "outputs": counts,
            "cluster": {"cpus": resources.cpus, "gpus": resources.gpus, "nodes": resources.nodes,
                        "encoder_actors": enc_plan.describe(), "topk_actors": topk_plan.describe()},
            "versions": library_versions(),
            "examples": _examples(output, catalogue, population.histories, fallback),
        }
        m.rows = len(counts)
    manifest["stages"] = clock.to_list()
    manifest["wall_seconds"] = round(time.perf_counter() - started, 3)
    output.write_json("manifest.json", manifest)
    output.commit()
    if matcher is not None and output.local:
        # The best weights are in the published run now; the training checkpoints are not needed.
        shutil.rmtree(os.path.join(output.root, MATCHER_CHECKPOINTS, run_id), ignore_errors=True)
    return RunResult(run_id=run_id, run_dir=output.published_path(), manifest=manifest)


MATCHER_CHECKPOINTS = ".matcher-checkpoints"


def _train_matcher(cfg, clock, resources, output, run_id, text, item_ids, log) -> MatcherArtifacts:
    """Train the matcher with Ray Train and save its best weights into the run (matcher/)."""
    plan = trainer_plan(cfg.matcher, resources)
    # Checkpoints live beside the runs, not in the staging run: a re-run with the same run id
    # finds them and resumes (staging is cleared on a new attempt).
    storage = f"{output.root_uri}/{MATCHER_CHECKPOINTS}" if not output.local else os.path.join(output.root, MATCHER_CHECKPOINTS)
    with clock.stage("train-matcher", "examples") as m:
        trained = train_matcher(text=text, item_ids=item_ids, log=log, cfg=cfg.matcher, plan=plan,
                                storage=storage, name=run_id)
        m.rows = int(len(trained.data.sequences.examples()[0]))
        best = trained.manifest()["validation"]
        m.detail = (f"{len(trained.state['history'])} epochs, best {trained.state['best_epoch']}: "
                    f"validation NDCG@10 {best['ndcg@10']:.4f}")
    with clock.stage("fusion", "items") as m:
        artifacts = matcher_artifacts(trained, text=text, item_ids=item_ids, log=log, fusion=cfg.matcher.fusion)
        m.rows = len(item_ids)
        fusion = artifacts.manifest.get("fusion")
        m.detail = f"two-tower weight {fusion['weight']}" if fusion else "off"
    buffer = io.BytesIO()
    torch.save(trained.state_dict, buffer)
    output.write_bytes("matcher/model.pt", buffer.getvalue())
    # user_embeddings/ are in the matcher's space: these are the item vectors to score them by.
    output.write_table("matcher", pa.table({
        "item_id": pa.array(item_ids, pa.string()),
        "embedding": to_fixed_size_list(artifacts.item_vectors),
    }), file_name="item_vectors.parquet")
    artifacts.manifest.update(checkpoint="matcher/model.pt", item_vectors="matcher/item_vectors.parquet",
                              dim=int(artifacts.item_vectors.shape[1]))
    return artifacts


EXAMPLE_USERS = 3
EXAMPLE_ITEMS = 5


def _examples(output: RunOutput, catalogue, histories: pa.Table, fallback: list[str]) -> list[dict]:
    """A few users' top items with titles and reasons, for the summary."""
    users = histories.column("user_id").to_pylist()[:EXAMPLE_USERS] or fallback[:EXAMPLE_USERS]
    if not users:
        return []
    table = output.dataset("recommendations").to_table(
        filter=pads.field("user_id").isin(users) & (pads.field("rank") <= EXAMPLE_ITEMS)
    ).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    row_of = {item_id: i for i, item_id in enumerate(catalogue.item_ids)}
    examples = {u: {"user_id": u, "items": []} for u in users}
    for r in table.to_pylist():
        examples[r["user_id"]]["items"].append(
            {"rank": r["rank"], "item_id": r["item_id"], "title": catalogue.display_titles[row_of[r["item_id"]]],
             "score": r["score"], "reason": r["reason"]}
        )
    return list(examples.values())

