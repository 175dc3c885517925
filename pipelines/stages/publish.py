"""publish: rejects/ and manifest.json written last into the run, then the commit (LATEST).

    STAGE    a run (`chatrec run`, `chatrec refresh`): recommendations and embeddings
    MATCHER  `chatrec train`: the item vectors and the trained matcher, no recommendations

The commit follows the stage's clock, so its own time is in the manifest it commits.
"""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from chatrec import schemas
from chatrec.catalogue import ItemCatalogue
from chatrec.embedding_cache import EmbeddingCache
from chatrec.item_text import TEMPLATE_VERSION
from chatrec.manifest import library_versions, utc_now
from chatrec.publish import RunOutput
from chatrec.stage_metrics import StageMetric
from chatrec.user_buckets import BUCKET_COLUMN, partitioning
from chatrec.validation import reject_counts_by_kind
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.stages.train_matcher import MATCHER_CHECKPOINTS
from pipelines.stages.validate_log import LOG_REJECTS

EXAMPLE_USERS = 3
EXAMPLE_ITEMS = 5


def _rejects(ctx: RunContext) -> pa.Table:
    """Every reject: the driver's, then those of a log validated on the cluster (read back:
    rejects are few next to the log)."""
    rejects = ctx.rejects
    if ctx.inputs.interactions is None and ctx.log_checked.rejected:
        log = ctx.output.dataset(LOG_REJECTS).to_table().cast(schemas.REJECTS)
        rejects = pa.concat_tables([rejects, log.sort_by([("source", "ascending"), ("row", "ascending")])])
    return rejects


def _manifest(ctx: RunContext, m: StageMetric) -> None:
    cfg, output, inputs = ctx.cfg, ctx.output, ctx.inputs
    embedding, matcher, topk_record = ctx.embedding, ctx.matcher, ctx.topk_record
    rejects = _rejects(ctx)
    if rejects.num_rows:
        output.write_table("rejects", rejects)
    output.ensure_table("rejects", schemas.REJECTS)
    log_read, log_valid = ctx.log_rows
    log_rejects = ctx.log_checked.rejected if ctx.log_checked is not None else 0
    output.ensure_table("recommendations", schemas.RECOMMENDATIONS)
    output.ensure_table("user_embeddings", schemas.user_embeddings(ctx.catalogue.dim))
    counts = {
        name: output.count_rows(name)
        for name in ("recommendations", "item_embeddings", "user_embeddings", "rejects")
    }
    ctx.manifest = {
        "run_id": ctx.run_id,
        "created_at": utc_now(),
        **({"baseline": {"name": ctx.baseline, "params": {}, "tuning": "defaults"}} if ctx.baseline else {}),
        "config": cfg.to_dict(),
        "config_sha256": cfg.sha256(),
        "model": _model(ctx),
        "item_text_template": TEMPLATE_VERSION,
        "embedding_cache": {"key": embedding.get("cache_key"), "embedded": embedding["embedded"],
                            "reused": embedding["reused"]},
        "matcher": matcher.manifest if matcher is not None else None,
        "top_k": cfg.retrieval.top_k,
        # Absent from the stage records of runs cut short before new-item slots existed.
        "new_item_slots": {"slots": topk_record.get("new_item_slots", 0),
                           "new_items": topk_record.get("new_items"),
                           "rows": topk_record.get("rows_in_new_item_slots", 0),
                           "why": topk_record.get("new_item_slots_why"),
                           "demand": topk_record.get("new_item_demand")},
        "rerank": ctx.rerank,
        "inputs": {
            "items": {"rows": inputs.items.rows_read, "valid": inputs.items.table.num_rows},
            "interactions": {"rows": log_read, "valid": log_valid},
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
        "rejects": {"total": rejects.num_rows, "by_source": inputs.reject_counts(log_rejects),
                    "by_reason": reject_counts_by_kind(rejects)},
        "items_truncated": ctx.truncated,
        "users": {
            "covered": ctx.users_with_history + ctx.users_without_history,
            "with_history": ctx.users_with_history,
            "popularity_fallback": ctx.users_without_history,
        },
        "partitioning": {"recommendations": partitioning(ctx.buckets)},
        **({"refresh": _refresh_record(ctx)} if ctx.refresh else {}),
        "resumed_stages": sorted(ctx.done - {"inputs", "inputs-log"}),
        "outputs": counts,
        "cluster": {"cpus": ctx.resources.cpus, "gpus": ctx.resources.gpus, "nodes": ctx.resources.nodes,
                    "encoder_actors": ctx.enc_plan.describe(), "topk_actors": ctx.topk_plan.describe()},
        "versions": library_versions(),
        "examples": _examples(output, ctx.catalogue),
    }
    m.rows = len(counts)


def _commit(ctx: RunContext) -> None:
    ctx.output.publish(ctx.manifest, stages=ctx.clock.to_list(), started=ctx.started)
    if ctx.matcher is not None:
        _drop_checkpoints(ctx.output)
    if ctx.cfg.output.embedding_cache and ctx.embedding.get("cache_key"):
        keep = ctx.texts.column("text_sha256").to_pylist() + ctx.profile_hashes
        EmbeddingCache(ctx.cfg.output.path, ctx.embedding["cache_key"], ctx.dim).compact(keep)


def _matcher_manifest(ctx: RunContext, m: StageMetric) -> None:
    cfg, output, inputs, embedding = ctx.cfg, ctx.output, ctx.inputs, ctx.embedding
    rejects = _rejects(ctx)
    log_read, log_valid = ctx.log_rows
    log_rejects = ctx.log_checked.rejected if ctx.log_checked is not None else 0
    if rejects.num_rows:
        output.write_table("rejects", rejects)
    output.ensure_table("rejects", schemas.REJECTS)
    counts = {name: output.count_rows(name) for name in ("item_embeddings", "rejects")}
    ctx.manifest = {
        "run_id": ctx.run_id, "created_at": utc_now(), "kind": "matcher",
        "config": cfg.to_dict(), "config_sha256": cfg.sha256(), "model": _model(ctx),
        "item_text_template": TEMPLATE_VERSION,
        "embedding_cache": {"key": embedding.get("cache_key"), "embedded": embedding["embedded"],
                            "reused": embedding["reused"]},
        "matcher": ctx.matcher.manifest,
        "inputs": {"items": {"rows": inputs.items.rows_read, "valid": inputs.items.table.num_rows},
                   "interactions": {"rows": log_read, "valid": log_valid}},
        "rejects": {"total": rejects.num_rows, "by_source": inputs.reject_counts(log_rejects),
                    "by_reason": reject_counts_by_kind(rejects)},
        "outputs": counts,
        "cluster": {"cpus": ctx.resources.cpus, "gpus": ctx.resources.gpus, "nodes": ctx.resources.nodes},
        "versions": library_versions(),
    }
    m.rows = len(counts)


def _commit_matcher(ctx: RunContext) -> None:
    ctx.output.publish(ctx.manifest, stages=ctx.clock.to_list(), started=ctx.started)
    _drop_checkpoints(ctx.output)


STAGE = Stage("publish", "tables", run=_manifest, after=_commit)
MATCHER = Stage("publish", "tables", run=_matcher_manifest, after=_commit_matcher)


def _model(ctx: RunContext) -> dict:
    cfg = ctx.cfg
    return {"spec": cfg.encoder.model, "fingerprint": ctx.fingerprint, "dim": ctx.dim,
            "max_length": cfg.encoder.max_length, "precision": ctx.precision}


def _drop_checkpoints(output: RunOutput) -> None:
    """The best weights are in the published run now; its training checkpoints are not needed."""
    if output.local:
        shutil.rmtree(os.path.join(output.root, MATCHER_CHECKPOINTS, output.run_id), ignore_errors=True)


def _refresh_record(ctx: RunContext) -> dict:
    """What the refresh reused and recomputed, against the previous run."""
    previous, texts, embedding, matcher = ctx.previous, ctx.texts, ctx.embedding, ctx.matcher
    if previous is None:
        return {"previous_run": None, "items": {"added": texts.num_rows, "changed": 0, "removed": 0, "unchanged": 0,
                                                 **{k: embedding[k] for k in ("embedded", "reused")}},
                "users": ctx.users_record, "matcher": matcher.manifest.get("refresh") if matcher else None}
    invalidated = previous.cache_invalidation(fingerprint=ctx.fingerprint, template=TEMPLATE_VERSION,
                                              max_length=ctx.cfg.encoder.max_length, precision=ctx.precision)
    return {
        "previous_run": previous.location,
        "items": {**previous.item_changes(texts), "embedded": embedding["embedded"], "reused": embedding["reused"]},
        "embedding_cache_invalidated": invalidated,
        "users": ctx.users_record,
        "matcher": matcher.manifest.get("refresh") if matcher else None,
    }


def _examples(output: RunOutput, catalogue: ItemCatalogue) -> list[dict]:
    """A few users' top items with titles and reasons, for the summary: the first users by
    id of the lowest bucket that has any (one bucket is read, not the whole table)."""
    recommendations = output.dataset("recommendations")
    by_bucket: dict[int, list] = {}
    for fragment in recommendations.get_fragments():
        by_bucket.setdefault(_bucket_of_path(fragment.path), []).append(fragment)
    users: list[str] = []
    for bucket in sorted(by_bucket):
        ids = pa.concat_tables(f.to_table(columns=["user_id"]) for f in by_bucket[bucket]).column("user_id")
        users = sorted(set(users) | set(pc.unique(ids).to_pylist()))[:EXAMPLE_USERS]
        if len(users) == EXAMPLE_USERS:
            break
    if not users:
        return []
    table = recommendations.to_table(
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


def _bucket_of_path(path: str) -> int:
    """The bucket a file of a table partitioned by user bucket is in (-1 outside any)."""
    for part in reversed(path.split("/")):
        if part.startswith(f"{BUCKET_COLUMN}="):
            return int(part.split("=", 1)[1])
    return -1
