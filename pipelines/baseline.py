"""A classic baseline as a job: the same published layout as `chatrec run`.

    1. read and validate train (and valid); rejected rows kept for rejects/
    2. tune on valid (fitted on train only), unless `params` are given or nothing is tunable;
       an epoch-trained baseline (sasrec) is tuned by early stopping unless `epochs` is given
    3. refit on train + valid with the chosen parameters (the final model sees every known
       interaction, as a nightly job would; sasrec trains the chosen number of epochs) and
       recommend top-K for every user, excluding everything they interacted with
    4. write recommendations/, rejects/ and manifest.json, then publish (LATEST last)

`content`, the zero-shot text-encoder baseline, is chatrec's own pipeline
(pipelines.full_run.run_job) on the same interactions; it is imported only when asked for,
so the matrix baselines run without Ray or torch (sasrec imports torch when it is fitted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
from pydantic import ValidationError

from chatrec import schemas
from chatrec.baselines.base import Baseline, EpochTrainedBaseline, jsonable_params
from chatrec.baselines.interaction_matrix import build_interaction_matrix
from chatrec.baselines.recommend import popularity_fallback_table, recommendation_tables
from chatrec.baselines.registry import ContentBaseline, get_baseline
from chatrec.baselines.tuning import needs_tuning, tune
from chatrec.catalogue import display_title
from chatrec.config import ChatrecConfig, OutputConfig, TableInput
from chatrec.errors import ConfigError, InputDataError
from chatrec.manifest import library_versions, new_run_id, utc_now
from chatrec.publish import RunOutput
from chatrec.readers import read_table
from chatrec.stage_metrics import StageClock
from chatrec.validation import Validated, reject_counts_by_kind, user_ids_in_log, validate_interactions, validate_items

logger = logging.getLogger(__name__)

# Recommendations are written in Parquet files of about this many rows: one file for a
# MovieLens-sized run (943 users x 20), ~20-40 MB files for large ones, and never more
# than one file's rows (plus one batch of users) held in memory.
ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True)
class BaselineResult:
    run_id: str
    run_dir: str  # where the published run lives
    manifest: dict
    baseline: str
    params: dict | str  # the parameters used, or "defaults"


def run_baseline(
    name: str,
    *,
    train: TableInput,
    valid: TableInput | None,
    output: str,
    top_k: int = 20,
    run_id: str | None = None,
    items: TableInput | None = None,
    config: ChatrecConfig | None = None,
    params: dict | None = None,
) -> BaselineResult:
    """Fit baseline `name` and publish its top-K under `output` like a `chatrec run`.

    `items` (or `config.inputs.items`) only supplies titles for the reasons of the matrix
    baselines; `content` needs it (and takes encoder settings from `config`).
    """
    baseline = get_baseline(name)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
    try:
        out_cfg = OutputConfig(path=output, run_id=run_id)
    except ValidationError as e:
        raise ConfigError(f"invalid output for baseline {name!r}: {e.errors()[0]['msg']} (got run_id {run_id!r})") from None
    run_id = out_cfg.run_id or new_run_id()
    if isinstance(baseline, ContentBaseline):
        return _run_content(train=train, valid=valid, output=output, top_k=top_k, run_id=run_id,
                            items=items, config=config, params=params)
    if items is None and config is not None:
        items = config.inputs.items
    chosen = baseline.resolve_params(params)  # checks given params before any work
    if valid is None and isinstance(baseline, EpochTrainedBaseline) and chosen["epochs"] is None:
        raise ConfigError(
            f"baseline {name!r} chooses its epoch count on a validation log: pass valid (--valid), "
            "or fix it with params {'epochs': N} (--param epochs=N)"
        )
    return _run_matrix(baseline, train=train, valid=valid, output=output, top_k=top_k, run_id=run_id,
                       items=items, params=chosen if params is not None else None)


def _run_matrix(
    baseline: Baseline,
    *,
    train: TableInput,
    valid: TableInput | None,
    output: str,
    top_k: int,
    run_id: str,
    items: TableInput | None,
    params: dict | None,
) -> BaselineResult:
    started = time.perf_counter()
    clock = StageClock()
    out = RunOutput(output, run_id)
    out.prepare()

    # 1. Read and validate (no catalogue check: the log's items are the universe)
    with clock.stage("read+validate", "rows") as m:
        train_v, train_users = _read_log(train)
        valid_v, valid_users = _read_log(valid) if valid is not None else (None, [])
        items_v = _read_items(items) if items is not None else None
        parts = {"train": train_v, "valid": valid_v, "items": items_v}
        rejects = pa.concat_tables([v.rejects for v in parts.values() if v is not None])
        m.rows = sum(v.rows_read for v in parts.values() if v is not None)
        m.detail = f"{rejects.num_rows} rejected"
    if train_v.table.num_rows == 0:
        raise InputDataError(
            f"the train log has no valid interactions ({train_v.rows_read} rows read, all rejected "
            "or none); a baseline needs at least one", source=train.display,
        )

    # 2. Tune on valid, fitted on train only
    tuning: dict | str = "given" if params is not None else "defaults"
    chosen = params if params is not None else baseline.resolve_params(None)
    if valid_v is not None and needs_tuning(baseline, params):
        with clock.stage("tune", "grid points") as m:
            result = tune(baseline, build_interaction_matrix(train_v.table), valid_v.table, top_k=top_k,
                          params=chosen if isinstance(baseline, EpochTrainedBaseline) else None)
            chosen, tuning = result.best_params, result.to_manifest()
            m.rows = len(result.scores)
            m.detail = f"best {jsonable_params(chosen)} on {result.users} validation users"

    # 3. Refit on train + valid, recommend for every user
    with clock.stage("fit", "interactions") as m:
        log = train_v.table if valid_v is None else pa.concat_tables([train_v.table, valid_v.table])
        matrix = build_interaction_matrix(log)
        model = baseline.fit(matrix, chosen)
        m.rows = log.num_rows
        m.detail = f"{matrix.n_users} users x {matrix.n_items} items, {matrix.X.nnz} distinct pairs"
    with clock.stage("recommend", "users") as m:
        titles = _display_titles(items_v.table) if items_v is not None else None
        tables = recommendation_tables(model, top_k=top_k, strategy=baseline.name, run_id=run_id, titles=titles)
        files = _write_in_parts(out, tables)
        # Users whose every row was rejected still get a list, as in `chatrec run`.
        fallback = sorted(set(train_users + valid_users) - set(matrix.user_ids.tolist()))
        if fallback:
            out.write_table("recommendations", popularity_fallback_table(matrix, fallback, top_k=top_k, run_id=run_id),
                            file_name="popularity-fallback.parquet")
        m.rows = matrix.n_users + len(fallback)
        m.detail = f"{files} file(s), {len(fallback)} popularity fallback"

    # 4. Rejects, manifest, publish
    with clock.stage("publish", "tables") as m:
        if rejects.num_rows:
            out.write_table("rejects", rejects)
        out.ensure_table("rejects", schemas.REJECTS)
        out.ensure_table("recommendations", schemas.RECOMMENDATIONS)
        counts = {name: out.count_rows(name) for name in ("recommendations", "rejects")}
        config = _config_record(train, valid, items, top_k=top_k, output=output, run_id=run_id)
        manifest = {
            "run_id": run_id,
            "created_at": utc_now(),
            "baseline": {"name": baseline.name, "params": jsonable_params(chosen), "tuning": tuning},
            "config": config,
            "config_sha256": _config_sha256(config),
            "top_k": top_k,
            "inputs": {
                **{k: {"rows": v.rows_read, "valid": v.table.num_rows} for k, v in parts.items() if v is not None},
                "interactions": {
                    "rows": train_v.rows_read + (valid_v.rows_read if valid_v else 0),
                    "valid": log.num_rows,
                    "distinct_pairs": int(matrix.X.nnz),
                    "users": matrix.n_users,
                    "items": matrix.n_items,
                },
            },
            "rejects": {
                "total": rejects.num_rows,
                "by_source": {k: v.rejects.num_rows for k, v in parts.items() if v is not None},
                "by_reason": reject_counts_by_kind(rejects),
            },
            "users": {
                "covered": matrix.n_users + len(fallback),
                "with_history": matrix.n_users,
                "popularity_fallback": len(fallback),
            },
            "outputs": counts,
            "versions": library_versions(),
        }
        m.rows = len(counts)
    out.publish(manifest, stages=clock.to_list(), started=started)
    return BaselineResult(run_id=run_id, run_dir=out.published_path(), manifest=manifest,
                          baseline=baseline.name, params=jsonable_params(chosen))


def _read_log(table: TableInput) -> tuple[Validated, list[str]]:
    """The validated log, and every user id of the raw log (valid rows or not)."""
    raw = read_table(table, id_columns=("user_id", "item_id"))
    validated = validate_interactions(raw, location=table.display, item_ids=None)
    return validated, user_ids_in_log(raw).to_pylist()


def _read_items(table: TableInput) -> Validated:
    return validate_items(
        read_table(table, id_columns=("item_id",)), location=table.display, attributes=[], categories_delimiter="|"
    )


def _display_titles(items: pa.Table) -> dict[str, str]:
    """item_id -> "Title (year)", as chatrec's reasons name items."""
    df = pl.from_arrow(items.select(["item_id", "title", "year"]))
    titles = df.select("item_id", display_title())
    return dict(zip(titles["item_id"].to_list(), titles["display"].to_list()))


def _write_in_parts(out: RunOutput, tables) -> int:
    """Batches of rows to part-00000.parquet, part-00001.parquet, ... of ~ROWS_PER_FILE rows."""
    pending: list[pa.Table] = []
    rows = files = 0
    for table in tables:
        pending.append(table)
        rows += table.num_rows
        if rows >= ROWS_PER_FILE:
            out.write_table("recommendations", pa.concat_tables(pending), file_name=f"part-{files:05d}.parquet")
            pending, rows, files = [], 0, files + 1
    if rows:
        out.write_table("recommendations", pa.concat_tables(pending), file_name=f"part-{files:05d}.parquet")
        files += 1
    return files


def _interactions_input(train: TableInput, valid: TableInput | None) -> TableInput:
    """train (+ valid) as one input, as chatrec's config names the interactions."""
    if valid is None:
        return train
    if (valid.format, valid.rename) != (train.format, train.rename):
        raise ConfigError(
            "train and valid must share format and rename to be read as one interactions input "
            f"(train: format={train.format!r}, rename={train.rename!r}; "
            f"valid: format={valid.format!r}, rename={valid.rename!r})"
        )
    return TableInput(path=train.locations + valid.locations, format=train.format, rename=train.rename)


def _config_record(
    train: TableInput, valid: TableInput | None, items: TableInput | None, *, top_k: int, output: str, run_id: str
) -> dict[str, Any]:
    """The run's inputs in chatrec's config shape: config.inputs.interactions names every
    location the run was given (train, then valid), so an evaluator can tell them apart
    from the test data."""
    interactions = {
        "path": train.locations + (valid.locations if valid is not None else []),
        "format": train.format,
        "rename": dict(train.rename),
    }
    inputs: dict[str, Any] = {
        "interactions": interactions,
        "train": train.model_dump(mode="json"),
        "valid": valid.model_dump(mode="json") if valid is not None else None,
    }
    if items is not None:
        inputs["items"] = items.model_dump(mode="json")
    return {"inputs": inputs, "retrieval": {"top_k": top_k}, "output": {"path": output, "run_id": run_id}}


def _config_sha256(config: dict[str, Any]) -> str:
    data = {**config, "output": {k: v for k, v in config["output"].items() if k != "run_id"}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _run_content(
    *,
    train: TableInput,
    valid: TableInput | None,
    output: str,
    top_k: int,
    run_id: str,
    items: TableInput | None,
    config: ChatrecConfig | None,
    params: dict | None,
) -> BaselineResult:
    """chatrec's own pipeline on train (+ valid): the zero-shot text-encoder baseline."""
    if params:
        raise ConfigError(f"baseline 'content' has no parameters; got {sorted(params)}")
    if config is None and items is None:
        raise ConfigError(
            "baseline 'content' needs the items table and encoder settings: pass config "
            "(a chatrec config with inputs.items) or items"
        )
    data = config.to_dict() if config is not None else {"inputs": {}}
    data["inputs"]["interactions"] = _interactions_input(train, valid).model_dump(mode="json")
    if items is not None:
        data["inputs"]["items"] = items.model_dump(mode="json")
    data.setdefault("retrieval", {})["top_k"] = top_k
    # Zero-shot: the text vectors' recency-weighted mean, never the finetuned matcher.
    data.setdefault("matcher", {})["enabled"] = False
    data["output"] = {"path": output, "run_id": run_id}
    try:
        cfg = ChatrecConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"baseline 'content': invalid configuration: {e}") from None

    from pipelines.full_run import run_job  # Ray, torch and FAISS: only for this baseline

    result = run_job(cfg, baseline="content")
    return BaselineResult(run_id=result.run_id, run_dir=result.run_dir, manifest=result.manifest,
                          baseline="content", params="defaults")
