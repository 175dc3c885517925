"""The full job: inputs in, published top-K recommendations out.

    1. take the output's lock, connect to Ray and plan the actor pools
    2. read and validate inputs (rejects kept)
    3. render item texts
    4. embed items (Ray Data encoder actors; the embedding cache serves unchanged texts)
    4b. train the matcher (Ray Train), or reuse the previous run's in a refresh
    5. build user histories
    6. embed users (Ray Data user-tower actors; a refresh reuses unchanged users' vectors)
    7. top-K with exclusions and reasons (Ray Data FAISS actors), popularity fallback
    7b. with rerank.enabled: a language model reorders the top N into the top K (pipelines/rerank.py)
    8. write rejects and manifest, then publish atomically; retention

Stages 4, 4b, 6, 7 and 7b end with a completion marker (chatrec.publish): a re-run of the same
run id after a crash skips what is marked and redoes the rest. Stages 2, 3 and 5 take
seconds and are always redone (their results are checked against the first attempt's).

`refresh=True` is the nightly refresh: the run LATEST names is the previous run, its
matcher is reused unless `refresh.retrain` says otherwise, and users whose inputs did not
change keep their vectors. Top-K is always recomputed for every user (new items may enter
anyone's list).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray
import torch
from transformers import AutoConfig

from chatrec import schemas
from chatrec.catalogue import build_catalogue
from chatrec.config import ChatrecConfig
from chatrec.embedding_cache import EmbeddingCache, encoder_key
from chatrec.errors import ConfigError, InputDataError, PublishError
from chatrec.encoder import count_truncated, import_model_code, fixed_size_list_to_numpy, to_fixed_size_list
from chatrec.histories import build_histories, history_keys, item_keys, item_popularity, profile_texts
from chatrec.item_text import TEMPLATE_VERSION
from chatrec.manifest import library_versions, new_run_id, utc_now
from chatrec.model_loading import model_fingerprint, resolve_model_dir
from chatrec.new_item_slots import SLOT_STRATEGY, items_without_interactions
from chatrec.output_lock import OutputLock
from chatrec.previous_run import PreviousRun
from chatrec.publish import WORK_DIR, RunOutput
from chatrec.retention import prune_runs
from chatrec.recommender import popularity_rows
from chatrec.retrieval import ExactIndex
from chatrec.matcher.profiles import UserProfiles
from chatrec.matcher.token_states import TokenStates, encode_token_states
from chatrec.matcher.training import finetunes_text
from chatrec.matcher.user_tower import MatcherUserEncoder
from chatrec.runtime import connect, encoder_plan, encoder_precision, retrieval_plan, trainer_plan, user_plan
from chatrec.user_vectors import RecencyMeanUserEncoder
from chatrec.stage_metrics import StageClock
from chatrec.validation import reject_counts_by_kind
from pipelines.embed_items import embed_items_cached
from pipelines.embed_users import embed_users, split_reusable
from pipelines.ingest import item_texts, read_inputs
from pipelines.recommend import recommend
from chatrec.rerank.stats import describe as rerank_detail
from pipelines.rerank import rerank_stage
from pipelines.train_matcher import MatcherArtifacts, matcher_artifacts, model_params, saved_matcher, train_matcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: str  # where the published run lives
    manifest: dict


def _read_embeddings(output: RunOutput, name: str, key: str) -> tuple[list[str], np.ndarray]:
    table = output.dataset(name).to_table(columns=[key, "embedding"]).sort_by(key)
    return table.column(key).to_pylist(), fixed_size_list_to_numpy(table.column("embedding"))


MATCHERS_DIR = "matchers"  # `chatrec train` publishes under <output>/matchers/, LATEST and all


def run_job(cfg: ChatrecConfig, *, baseline: str | None = None, refresh: bool = False,
            train_only: bool = False) -> RunResult:
    """Run the whole job on `cfg` and publish it. `baseline` names the run in its manifest
    when it serves as an evaluation baseline (`chatrec baseline content`); `refresh` makes it
    the nightly refresh (see the module docstring). `train_only` (`chatrec train`) stops after
    the matcher and publishes it under <output>/matchers/, for `matcher.from_run`."""
    if train_only and (not cfg.matcher.enabled or cfg.matcher.from_run):
        raise ConfigError("chatrec train trains the matcher: set matcher.enabled: true and no matcher.from_run")
    run_id = cfg.output.run_id or new_run_id()
    root = f"{cfg.output.path.rstrip('/')}/{MATCHERS_DIR}" if train_only else cfg.output.path
    output = RunOutput(root, run_id)
    with OutputLock(root, run_id, ttl=cfg.output.lock_ttl_seconds):
        if output.commit_pending():
            # The driver died between moving the run into place and writing LATEST.
            logger.info("run %s was complete but never made LATEST: publishing it now", run_id)
            output.write_latest()
            result = RunResult(run_id, output.published_path(), output.published_manifest())
        else:
            result = _run(cfg, output, baseline=baseline, refresh=refresh, train_only=train_only)
        if cfg.output.keep is not None:
            result.manifest["retention"] = {"keep": cfg.output.keep, "deleted": prune_runs(root, cfg.output.keep)}
    return result


def _run(cfg: ChatrecConfig, output: RunOutput, *, baseline: str | None, refresh: bool,
         train_only: bool = False) -> RunResult:
    started = time.perf_counter()
    clock = StageClock()
    run_id = output.run_id

    # 1. Ray and the actor pools; the staging directory (resumed if an attempt was cut short)
    model_dir = resolve_model_dir(cfg.encoder.model)
    if refresh and cfg.ray.in_driver_below:
        # A refresh encodes its few changed items here: import the model code while Ray starts.
        threading.Thread(target=import_model_code, args=(model_dir,), daemon=True).start()
    resources = connect(cfg.ray)
    enc_plan = encoder_plan(cfg.encoder, resources)
    precision = encoder_precision(cfg.encoder, enc_plan)
    topk_plan = retrieval_plan(cfg.retrieval, resources)
    logger.info(
        "cluster: %d CPUs, %d GPUs on %d node(s); encoder %s, %s; top-K %s",
        resources.cpus, resources.gpus, resources.nodes, enc_plan.describe(), precision, topk_plan.describe(),
    )
    fingerprint = model_fingerprint(model_dir)
    done = set(output.prepare(config_sha256=cfg.sha256()))
    previous = PreviousRun.latest(cfg.output.path) if refresh else None
    if refresh:
        logger.info("refresh: previous run %s", previous.run_id if previous else "none (first run: everything computed)")

    # 2. Read and validate
    with clock.stage("read+validate", "rows") as m:
        inputs = read_inputs(cfg.inputs, cfg.item_text, cfg.feedback)
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
    _check_same_inputs(output, texts, inputs.interactions.table, inputs.users.table if inputs.users else None)

    # 4. Item embeddings
    dim = int(AutoConfig.from_pretrained(model_dir).hidden_size)
    cache_key = encoder_key(fingerprint=fingerprint, max_length=cfg.encoder.max_length, precision=precision)
    with clock.stage("embed-items", "items") as m:
        if "embed-items" in done:
            embedding = output.stage_record("embed-items")
            m.detail = "completed by an earlier attempt"
        else:
            output.reset("item_embeddings")
            cache = EmbeddingCache(cfg.output.path, cache_key, dim) if cfg.output.embedding_cache else None
            embedding = embed_items_cached(
                texts, cache=cache, output=output, name="item_embeddings", fingerprint=fingerprint, dim=dim,
                encoder=cfg.encoder, plan=enc_plan, precision=precision,
                # Only a refresh: a full run's pools are what runs at scale, small data or not.
                in_driver_below=cfg.ray.in_driver_below if previous is not None else 0,
            )
            embedding["cache_key"] = cache_key if cache is not None else None
            output.mark_complete("embed-items", embedding)
            m.detail = f"{embedding['embedded']} embedded, {embedding['reused']} from the embedding cache"
        item_ids, vectors = _read_embeddings(output, "item_embeddings", "item_id")
        m.rows = embedding["embedded"]
    if item_ids != texts.column("item_id").to_pylist():
        raise RuntimeError("item embeddings do not cover the catalogue one-to-one")  # internal bug
    text_fingerprint = hashlib.sha256(f"{cache_key}:{TEMPLATE_VERSION}".encode()).hexdigest()[:16]
    # 4b. The matcher: trained on the log (or reused), its item tower replaces the text vectors
    matcher, user_profiles, profile_hashes = None, None, []
    if cfg.matcher.enabled:
        if cfg.matcher.profile == "auto" and inputs.users is not None:
            with clock.stage("embed-profiles", "profiles") as m:
                user_profiles, profiles_record, profile_hashes = _profile_vectors(
                    inputs.users.table, output=output, cfg=cfg, cache_key=cache_key, fingerprint=fingerprint, dim=dim,
                    plan=enc_plan, precision=precision, in_driver_below=cfg.ray.in_driver_below if previous else 0)
                m.rows = profiles_record["embedded"]
                m.detail = f"{profiles_record['texts']} distinct texts, {profiles_record['reused']} from the cache"

        def token_states_of(layers: int) -> TokenStates:
            with clock.stage("token-states", "items") as m:
                states = _token_states(cfg, texts.column("text").to_pylist(), enc_plan, fingerprint, layers)
                m.rows = states.n_items
                m.detail = f"below the top {layers} encoder layer(s): {states.states.nbytes / 1e6:.0f} MB"
            return states

        matcher = _matcher(cfg, clock, resources, output, vectors, item_ids, pl.from_arrow(inputs.interactions.table),
                           done=done, previous=previous, text_fingerprint=text_fingerprint, profiles=user_profiles,
                           token_states_of=token_states_of)
        if user_profiles is not None:
            matcher.manifest["profiles"] = profiles_record
        vectors = matcher.item_vectors
    if train_only:
        return _publish_matcher(cfg, output, clock, started, inputs, rejects, embedding, matcher, resources,
                                model={"spec": cfg.encoder.model, "fingerprint": fingerprint, "dim": dim,
                                       "max_length": cfg.encoder.max_length, "precision": precision})
    catalogue = build_catalogue(inputs.items.table, vectors, inputs.knowledge)
    catalogue_ref = ray.put(catalogue)
    index_ref = ray.put(ExactIndex.build(vectors).to_bytes())

    # 5. Histories, each with the key of what its user vector is computed from
    with clock.stage("histories", "users") as m:
        extra_users = inputs.log_user_ids
        if inputs.users is not None:
            extra_users = pa.concat_arrays([extra_users, inputs.users.table.column("user_id").combine_chunks()])
        population = build_histories(
            inputs.interactions.table, texts, max_items=cfg.history.max_items, extra_user_ids=extra_users,
            users=inputs.users.table if inputs.users is not None else None, excluded=inputs.exclusions,
        )
        profiles = cfg.history.profile_weight > 0 and inputs.users is not None
        tower_key = json.dumps(
            {"matcher": matcher.manifest.get("trained_in_run"), "params": matcher.manifest["params"]} if matcher
            else {"content": cache_key, "half_life": cfg.history.half_life,
                  "profile_weight": cfg.history.profile_weight if profiles else 0.0},
            sort_keys=True,
        )
        histories = population.histories.set_column(
            population.histories.schema.get_field_index("history_key"), "history_key",
            pa.array(history_keys(population.histories, item_keys(texts), tower_key), pa.int64()),
        )
        m.rows = histories.num_rows + len(population.fallback_user_ids)
        m.detail = f"{len(population.fallback_user_ids)} without usable history"

    # 6. User embeddings
    with clock.stage("embed-users", "users") as m:
        if "embed-users" in done:
            users_record = output.stage_record("embed-users")
            m.detail = "completed by an earlier attempt"
        else:
            output.reset(f"{WORK_DIR}/user_vectors", "user_embeddings")
            reused, todo = split_reusable(
                histories, previous.table("user_embeddings", ["user_id", "history_key", "embedding"]) if previous else None,
                catalogue.dim,
            )
            if reused.num_rows:
                output.write_table(f"{WORK_DIR}/user_vectors", reused, file_name="reused.parquet")
            if histories.num_rows:
                embed_users(
                    todo, **_user_tower(cfg, catalogue_ref, matcher, resources, enc_plan, precision, fingerprint, profiles),
                    dim=catalogue.dim, users_per_block=cfg.history.users_per_block,
                    in_driver_below=cfg.ray.in_driver_below if previous is not None else 0,
                    work_path=output.path(f"{WORK_DIR}/user_vectors"), out_path=output.path("user_embeddings"),
                )
            users_record = {"recomputed": todo.num_rows, "reused": reused.num_rows}
            output.mark_complete("embed-users", users_record)
            m.detail = f"{reused.num_rows} reused from the previous run" if previous else ""
        m.rows = users_record["recomputed"]

    # 7. Top-K, reasons, fallback. With the rerank stage: the top N candidates, to a work table.
    topk_table = f"{WORK_DIR}/candidates" if cfg.rerank.enabled else "recommendations"
    retrieval = cfg.retrieval.model_copy(update={"top_k": cfg.rerank.candidates}) if cfg.rerank.enabled else cfg.retrieval
    with clock.stage("top-k", "users") as m:
        fallback = population.fallback_user_ids.to_pylist()
        if "top-k" in done:
            m.detail = "completed by an earlier attempt"
            topk_record = output.stage_record("top-k")
        else:
            output.reset(topk_table)
            new_rows = items_without_interactions(
                catalogue.item_ids, pc.unique(inputs.interactions.table.column("item_id")).to_pylist()
            )
            if histories.num_rows:
                recommend(
                    user_vectors_path=output.path(f"{WORK_DIR}/user_vectors"), index_ref=index_ref,
                    catalogue_ref=catalogue_ref, retrieval=retrieval, plan=topk_plan, run_id=run_id,
                    out_path=output.path(topk_table), strategy="two-tower" if matcher else "content",
                    fusion=ray.put(matcher.fusion) if matcher is not None and matcher.fusion else None,
                    new_rows=ray.put(new_rows) if retrieval.new_item_slots else None,
                    users_per_block=cfg.history.users_per_block,
                )
            if fallback:
                popularity = item_popularity(inputs.interactions.table, texts)
                output.write_table(
                    topk_table,
                    popularity_rows(fallback, popularity, top_k=retrieval.top_k, run_id=run_id),
                    file_name="popularity-fallback.parquet",
                )
            topk_record = {"users": histories.num_rows + len(fallback), "new_items": len(new_rows),
                           "new_item_slots": retrieval.new_item_slots,
                           "rows_in_new_item_slots": output.count_rows(topk_table, pads.field("strategy") == SLOT_STRATEGY) or 0}
            output.mark_complete("top-k", topk_record)
        m.rows = histories.num_rows + len(fallback)

    # 7b. Rerank (pipelines/rerank.py): a language model orders the N candidates into the top K
    rerank = None
    if cfg.rerank.enabled:
        with clock.stage("rerank", "users") as m:
            if "rerank" in done:  # the costliest stage of all: never paid twice
                rerank = output.stage_record("rerank")
            else:
                output.reset("recommendations", "rerank_status")
                rerank = rerank_stage(
                    candidates_path=output.path(topk_table), out_path=output.path("recommendations"),
                    status_path=output.path("rerank_status"), catalogue=catalogue, histories=histories,
                    users=inputs.users.table if inputs.users is not None else None, item_text=texts,
                    cfg=cfg.rerank, top_k=cfg.retrieval.top_k, run_id=run_id,
                )
                output.mark_complete("rerank", rerank)
            m.rows, m.detail = rerank["users"]["total"], rerank_detail(rerank)

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
            "embedding_cache": {"key": embedding.get("cache_key"), "embedded": embedding["embedded"],
                                "reused": embedding["reused"]},
            "matcher": matcher.manifest if matcher is not None else None,
            "top_k": cfg.retrieval.top_k,
            # Absent from the stage records of runs cut short before new-item slots existed.
            "new_item_slots": {"slots": topk_record.get("new_item_slots", 0),
                               "new_items": topk_record.get("new_items"),
                               "rows": topk_record.get("rows_in_new_item_slots", 0)},
            "rerank": rerank,
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
                **({"feedback": inputs.feedback_manifest()} if inputs.feedback is not None else {}),
            },
            "rejects": {"total": rejects.num_rows, "by_source": inputs.reject_counts(),
                        "by_reason": reject_counts_by_kind(rejects)},
            "items_truncated": truncated,
            "users": {
                "covered": histories.num_rows + len(fallback),
                "with_history": histories.num_rows,
                "popularity_fallback": len(fallback),
            },
            **({"refresh": _refresh_record(previous, texts, embedding, users_record, matcher, cfg, fingerprint,
                                           precision)} if refresh else {}),
            "resumed_stages": sorted(done - {"inputs"}),
            "outputs": counts,
            "cluster": {"cpus": resources.cpus, "gpus": resources.gpus, "nodes": resources.nodes,
                        "encoder_actors": enc_plan.describe(), "topk_actors": topk_plan.describe()},
            "versions": library_versions(),
            "examples": _examples(output, catalogue, histories, fallback),
        }
        m.rows = len(counts)
    output.publish(manifest, stages=clock.to_list(), started=started)
    if matcher is not None:
        _drop_checkpoints(output)
    if cfg.output.embedding_cache and embedding.get("cache_key"):
        keep = texts.column("text_sha256").to_pylist() + profile_hashes
        EmbeddingCache(cfg.output.path, embedding["cache_key"], dim).compact(keep)
    return RunResult(run_id=run_id, run_dir=output.published_path(), manifest=manifest)


def _publish_matcher(cfg, output, clock, started, inputs, rejects, embedding, matcher, resources, *, model) -> RunResult:
    """`chatrec train`: publish the item vectors and the trained matcher, no recommendations."""
    with clock.stage("publish", "tables") as m:
        if rejects.num_rows:
            output.write_table("rejects", rejects)
        output.ensure_table("rejects", schemas.REJECTS)
        counts = {name: output.count_rows(name) for name in ("item_embeddings", "rejects")}
        manifest = {
            "run_id": output.run_id, "created_at": utc_now(), "kind": "matcher",
            "config": cfg.to_dict(), "config_sha256": cfg.sha256(), "model": model,
            "item_text_template": TEMPLATE_VERSION,
            "embedding_cache": {"key": embedding.get("cache_key"), "embedded": embedding["embedded"],
                                "reused": embedding["reused"]},
            "matcher": matcher.manifest,
            "inputs": {"items": {"rows": inputs.items.rows_read, "valid": inputs.items.table.num_rows},
                       "interactions": {"rows": inputs.interactions.rows_read,
                                        "valid": inputs.interactions.table.num_rows}},
            "rejects": {"total": rejects.num_rows, "by_source": inputs.reject_counts(),
                        "by_reason": reject_counts_by_kind(rejects)},
            "outputs": counts,
            "cluster": {"cpus": resources.cpus, "gpus": resources.gpus, "nodes": resources.nodes},
            "versions": library_versions(),
        }
        m.rows = len(counts)
    output.publish(manifest, stages=clock.to_list(), started=started)
    _drop_checkpoints(output)
    return RunResult(run_id=output.run_id, run_dir=output.published_path(), manifest=manifest)


def _drop_checkpoints(output: RunOutput) -> None:
    """The best weights are in the published run now; its training checkpoints are not needed."""
    if output.local:
        shutil.rmtree(os.path.join(output.root, MATCHER_CHECKPOINTS, output.run_id), ignore_errors=True)


def _check_same_inputs(output: RunOutput, texts: pa.Table, log: pa.Table, users: pa.Table | None) -> None:
    """A resumed attempt must see the inputs the first attempt saw: its marked stages were
    computed from them."""
    digest = hashlib.sha256()
    for table in (texts.select(["item_id", "text_sha256"]), log, users):
        if table is not None:
            # Row hashes, not raw buffers: Arrow buffers may carry slack bytes of no meaning.
            digest.update(pl.from_arrow(table).hash_rows(seed=0).to_numpy().tobytes())
    key = digest.hexdigest()
    first = output.stage_record("inputs")
    if first is None:
        output.mark_complete("inputs", {"sha256": key})
    elif first["sha256"] != key:
        raise PublishError(
            f"run {output.run_id!r} has an interrupted attempt at {output.staging_dir} made from other input "
            "data: it cannot be resumed with these inputs. Use a new run id, or delete that directory to start "
            "this run id over"
        )


def _user_tower(cfg, catalogue_ref, matcher, resources, enc_plan, precision, fingerprint, profiles) -> dict:
    """embed_users' tower, its kwargs and actor plan."""
    if matcher is not None:
        return dict(tower=MatcherUserEncoder, plan=user_plan(resources), tower_kwargs=dict(
            catalogue=catalogue_ref, matcher=ray.put(matcher.user_tower), threads=user_plan(resources).threads))
    # Profiles need the text encoder in the user actors (and its GPU, if it has one).
    text_encoder = dict(
        model=cfg.encoder.model, fingerprint=fingerprint, max_length=cfg.encoder.max_length,
        batch_size=cfg.encoder.batch_size, device=enc_plan.device, precision=precision,
        num_threads=enc_plan.threads,
    ) if profiles else None
    return dict(tower=RecencyMeanUserEncoder, plan=enc_plan if profiles else user_plan(resources), tower_kwargs=dict(
        catalogue=catalogue_ref, half_life=cfg.history.half_life,
        profile_weight=cfg.history.profile_weight if profiles else 0.0, text_encoder=text_encoder,
    ))


def _refresh_record(previous, texts, embedding, users_record, matcher, cfg, fingerprint, precision) -> dict:
    """What the refresh reused and recomputed, against the previous run."""
    if previous is None:
        return {"previous_run": None, "items": {"added": texts.num_rows, "changed": 0, "removed": 0, "unchanged": 0,
                                                 **{k: embedding[k] for k in ("embedded", "reused")}},
                "users": users_record, "matcher": matcher.manifest.get("refresh") if matcher else None}
    invalidated = previous.cache_invalidation(fingerprint=fingerprint, template=TEMPLATE_VERSION,
                                              max_length=cfg.encoder.max_length, precision=precision)
    return {
        "previous_run": previous.location,
        "items": {**previous.item_changes(texts), "embedded": embedding["embedded"], "reused": embedding["reused"]},
        "embedding_cache_invalidated": invalidated,
        "users": users_record,
        "matcher": matcher.manifest.get("refresh") if matcher else None,
    }


MATCHER_CHECKPOINTS = ".matcher-checkpoints"
PROFILE_EMBEDDINGS = f"{WORK_DIR}/profile_embeddings"


def _profile_vectors(users: pa.Table, *, output: RunOutput, cfg: ChatrecConfig, cache_key: str, fingerprint: str,
                     dim: int, plan, precision: str, in_driver_below: int) -> tuple[UserProfiles, dict, list[str]]:
    """Every distinct profile text of the users table through the item encoder (and its
    embedding cache), for the user tower's profile token. Also returns the texts' hashes:
    the cache keeps their vectors when it is compacted."""
    text_of_user = {u: t for u, t in profile_texts(users).iter_rows() if t}
    distinct = sorted(set(text_of_user.values()))
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in distinct]
    table = pa.table({"item_id": hashes, "row": pa.array(range(len(distinct)), pa.int32()), "text": distinct,
                      "text_sha256": hashes}).cast(schemas.ITEM_TEXT)
    output.reset(PROFILE_EMBEDDINGS)
    record = {"users": len(text_of_user), "texts": len(distinct), "embedded": 0, "reused": 0}
    if distinct:
        cache = EmbeddingCache(cfg.output.path, cache_key, dim) if cfg.output.embedding_cache else None
        record.update(embed_items_cached(table, cache=cache, output=output, name=PROFILE_EMBEDDINGS,
                                         fingerprint=fingerprint, dim=dim, encoder=cfg.encoder, plan=plan,
                                         precision=precision, in_driver_below=in_driver_below))
        ids, vectors = _read_embeddings(output, PROFILE_EMBEDDINGS, "item_id")
    else:
        ids, vectors = [], np.zeros((0, dim), np.float32)
    text_of_hash = dict(zip(hashes, distinct))
    profiles = UserProfiles({text_of_hash[h]: row for row, h in enumerate(ids)}, vectors, text_of_user)
    return profiles, record, hashes


def _token_states(cfg: ChatrecConfig, texts: list[str], plan, fingerprint: str, layers: int) -> TokenStates:
    """The catalogue's token states below the encoder's top `layers`, computed by one task
    with an encoder actor's resources (its GPU, if it has one)."""
    task = ray.remote(encode_token_states).options(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)
    return ray.get(task.remote(model=cfg.encoder.model, fingerprint=fingerprint, texts=texts,
                               max_length=cfg.encoder.max_length, top_layers=layers,
                               batch_size=cfg.encoder.batch_size, device=plan.device, num_threads=plan.threads))


def _states_for(record: dict, token_states_of) -> TokenStates | None:
    """A saved matcher's token states for the current catalogue, if its encoder top was finetuned."""
    params = record["params"]
    return token_states_of(params["text_encoder"]["layers"]) if finetunes_text(params) else None


def _matcher(cfg, clock, resources, output, text, item_ids, log, *, done, previous, text_fingerprint,
             profiles, token_states_of) -> MatcherArtifacts:
    """The matcher's artifacts: from this run's staging (resume), the previous run (refresh
    policy allows), or trained now with Ray Train. Its weights and item vectors go into the
    run (matcher/). `token_states_of(layers)` computes the catalogue's token states for a
    matcher whose encoder top is finetuned."""
    params = model_params(cfg.matcher, profiles is not None)
    if "train-matcher" in done:
        record = output.stage_record("train-matcher")
        states = _states_for(record, token_states_of)
        with clock.stage("train-matcher", "examples") as m:
            state = torch.load(io.BytesIO(output.read_bytes("matcher/model.pt")), weights_only=True, map_location="cpu")
            artifacts = saved_matcher(state_dict=state, saved_ids=item_ids, record=record, text=text,
                                      item_ids=item_ids, log=log, profiles=profiles, token_states=states)
            m.detail = "completed by an earlier attempt"
        return artifacts
    output.reset("matcher")
    if cfg.matcher.from_run:
        trained = PreviousRun.at(cfg.matcher.from_run)
        if (trained.manifest.get("matcher") or {}).get("text_fingerprint") != text_fingerprint:
            raise ConfigError(
                f"matcher.from_run {cfg.matcher.from_run}: that matcher was trained on other item text vectors "
                "(another encoder, encoder settings or text template): train it again with this config"
            )
        why = None
        previous = trained
    else:
        why = previous.retrain_reason(cfg.refresh, params=params, text_fingerprint=text_fingerprint,
                                      log_rows=log.height) if previous is not None else "no previous run"
    if previous is not None and why is None:
        state, saved_ids, record = previous.matcher_state()
        states = _states_for(record, token_states_of)
        with clock.stage("train-matcher", "examples") as m:
            artifacts = saved_matcher(state_dict=state, saved_ids=saved_ids, record=record, text=text,
                                      item_ids=item_ids, log=log, profiles=profiles, token_states=states)
            artifacts.manifest["refresh"] = {"retrained": False, "reused_from": previous.run_id,
                                             "policy": "matcher.from_run" if cfg.matcher.from_run else cfg.refresh.retrain}
            m.detail = f"reused from run {previous.run_id} (trained in {record['trained_in_run']})"
    else:
        states = token_states_of(cfg.matcher.finetune_layers) if finetunes_text(params) else None
        artifacts = _train_matcher(cfg, clock, resources, output, output.run_id, text, item_ids, log, profiles, states)
        artifacts.manifest.update(trained_in_run=output.run_id, trained_at=utc_now(), log_rows=log.height,
                                  text_fingerprint=text_fingerprint,
                                  refresh={"retrained": True, "reason": why, "policy": cfg.refresh.retrain})
    buffer = io.BytesIO()
    torch.save(artifacts.state_dict, buffer)
    output.write_bytes("matcher/model.pt", buffer.getvalue())
    # user_embeddings/ are in the matcher's space: these are the item vectors to score them by.
    output.write_table("matcher", pa.table({
        "item_id": pa.array(item_ids, pa.string()),
        "embedding": to_fixed_size_list(artifacts.item_vectors),
    }), file_name="item_vectors.parquet")
    artifacts.manifest.update(checkpoint="matcher/model.pt", item_vectors="matcher/item_vectors.parquet",
                              dim=int(artifacts.item_vectors.shape[1]))
    output.mark_complete("train-matcher", artifacts.manifest)
    return artifacts


def _train_matcher(cfg, clock, resources, output, run_id, text, item_ids, log, profiles, token_states) -> MatcherArtifacts:
    """Train the matcher with Ray Train, then tune the fusion."""
    plan = trainer_plan(cfg.matcher, resources)
    # Checkpoints live beside the runs, not in the staging run, so Ray Train's own resume
    # finds them whatever happens to the staging directory.
    storage = f"{output.root_uri}/{MATCHER_CHECKPOINTS}" if not output.local else os.path.join(output.root, MATCHER_CHECKPOINTS)
    with clock.stage("train-matcher", "examples") as m:
        trained = train_matcher(text=text, item_ids=item_ids, log=log, cfg=cfg.matcher, plan=plan,
                                storage=storage, name=run_id, profiles=profiles, token_states=token_states)
        m.rows = int(len(trained.data.sequences.examples()[0]))
        best = trained.manifest()["validation"]
        m.detail = (f"{len(trained.state['history'])} epochs, best {trained.state['best_epoch']}: "
                    f"validation NDCG@10 {best['ndcg@10']:.4f}")
    with clock.stage("fusion", "items") as m:
        artifacts = matcher_artifacts(trained, text=text, item_ids=item_ids, log=log, fusion=cfg.matcher.fusion,
                                      profiles=profiles)
        m.rows = len(item_ids)
        fusion = artifacts.manifest.get("fusion")
        m.detail = f"two-tower weight {fusion['weight']}" if fusion else "off"
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

