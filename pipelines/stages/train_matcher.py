"""The matcher (pipelines/train_matcher.py): trained on the log with Ray Train, or reused.

    choose         (driver step) resumed from this run's staging, reused from a published
                   run (a refresh whose policy allows it, or matcher.from_run), or trained now
    train-matcher  the weights: trained, or the saved ones over the current catalogue;
                   then, when trained here, the fusion stage; then written into the run
                   (matcher/model.pt, matcher/item_vectors.parquet). Resumable.

Its item tower's vectors replace the text vectors for scoring.
"""

from __future__ import annotations

import io
import os

import polars as pl
import pyarrow as pa
import torch

from chatrec import schemas
from chatrec.encoder import to_fixed_size_list
from chatrec.errors import ConfigError
from chatrec.manifest import utc_now
from chatrec.previous_run import PreviousRun
from chatrec.runtime import trainer_plan
from chatrec.stage_metrics import StageMetric
from pipelines.stage_runner import Stage
from pipelines.stages import fusion
from pipelines.stages.context import MatcherChoice, RunContext
from pipelines.stages.validate_log import VALID_LOG
from pipelines.train_matcher import model_params, saved_matcher, train_matcher

NAME = "train-matcher"
MATCHER_CHECKPOINTS = ".matcher-checkpoints"


def choose(ctx: RunContext) -> None:
    """Where the matcher comes from; a driver step before its stages (the token states it
    needs depend on it)."""
    cfg = ctx.cfg
    if not cfg.matcher.enabled:
        return
    ctx.log = log = pl.from_arrow(
        ctx.inputs.interactions.table if ctx.inputs.interactions is not None
        # Validated on the cluster: read back (the matcher's examples are still built here).
        else ctx.output.dataset(VALID_LOG).to_table().cast(schemas.INTERACTIONS)
    )
    params = model_params(cfg.matcher, ctx.profiles is not None)
    if NAME in ctx.done:
        ctx.matcher_choice = MatcherChoice(params, record=ctx.output.stage_record(NAME))
        return
    if cfg.matcher.from_run:
        trained = PreviousRun.at(cfg.matcher.from_run)
        if (trained.manifest.get("matcher") or {}).get("text_fingerprint") != ctx.text_fingerprint:
            raise ConfigError(
                f"matcher.from_run {cfg.matcher.from_run}: that matcher was trained on other item text vectors "
                "(another encoder, encoder settings or text template): train it again with this config"
            )
        why, previous = None, trained
    else:
        previous = ctx.previous
        why = previous.retrain_reason(cfg.refresh, params=params, text_fingerprint=ctx.text_fingerprint,
                                      log_rows=log.height) if previous is not None else "no previous run"
    if previous is not None and why is None:
        state, saved_ids, record = previous.matcher_state()
        ctx.matcher_choice = MatcherChoice(params, record=record, reused_from=previous, state=state,
                                           saved_ids=saved_ids)
    else:
        ctx.matcher_choice = MatcherChoice(params, why=why, plan=trainer_plan(cfg.matcher, ctx.resources))


def _wanted(ctx: RunContext) -> bool:
    return ctx.matcher_choice is not None


def _run(ctx: RunContext, m: StageMetric) -> None:
    cfg, choice = ctx.cfg, ctx.matcher_choice
    if choice.record is not None:
        ctx.matcher = saved_matcher(state_dict=choice.state, saved_ids=choice.saved_ids, record=choice.record,
                                    text=ctx.text_vectors, item_ids=ctx.item_ids, log=ctx.log,
                                    profiles=ctx.profiles, token_states=ctx.token_states)
        ctx.matcher.manifest["refresh"] = {"retrained": False, "reused_from": choice.reused_from.run_id,
                                           "policy": "matcher.from_run" if cfg.matcher.from_run else cfg.refresh.retrain}
        m.detail = f"reused from run {choice.reused_from.run_id} (trained in {choice.record['trained_in_run']})"
        return
    output = ctx.output
    # Checkpoints live beside the runs, not in the staging run, so Ray Train's own resume
    # finds them whatever happens to the staging directory.
    storage = (f"{output.root_uri}/{MATCHER_CHECKPOINTS}" if not output.local
               else os.path.join(output.root, MATCHER_CHECKPOINTS))
    trained = train_matcher(text=ctx.text_vectors, item_ids=ctx.item_ids, log=ctx.log, cfg=cfg.matcher,
                            plan=choice.plan, storage=storage, name=ctx.run_id, profiles=ctx.profiles,
                            token_states=ctx.token_states)
    m.rows = int(len(trained.data.sequences.examples()[0]))
    best = trained.manifest()["validation"]
    m.detail = (f"{len(trained.state['history'])} epochs, best {trained.state['best_epoch']}: "
                f"validation NDCG@10 {best['ndcg@10']:.4f}")
    ctx.trained = trained


def _resume(ctx: RunContext, record: dict, m: StageMetric) -> None:
    """The weights this run's earlier attempt saved, over the same catalogue."""
    state = torch.load(io.BytesIO(ctx.output.read_bytes("matcher/model.pt")), weights_only=True, map_location="cpu")
    ctx.matcher = saved_matcher(state_dict=state, saved_ids=ctx.item_ids, record=record, text=ctx.text_vectors,
                                item_ids=ctx.item_ids, log=ctx.log, profiles=ctx.profiles,
                                token_states=ctx.token_states)


def _save(ctx: RunContext) -> None:
    """Its weights and item vectors into the run, recorded in its manifest entry."""
    artifacts, choice = ctx.matcher, ctx.matcher_choice
    if choice.record is None:
        artifacts.manifest.update(trained_in_run=ctx.run_id, trained_at=utc_now(), log_rows=ctx.log.height,
                                  text_fingerprint=ctx.text_fingerprint,
                                  refresh={"retrained": True, "reason": choice.why, "policy": ctx.cfg.refresh.retrain})
    buffer = io.BytesIO()
    torch.save(artifacts.state_dict, buffer)
    ctx.output.write_bytes("matcher/model.pt", buffer.getvalue())
    # user_embeddings/ are in the matcher's space: these are the item vectors to score them by.
    ctx.output.write_table("matcher", pa.table({
        "item_id": pa.array(ctx.item_ids, pa.string()),
        "embedding": to_fixed_size_list(artifacts.item_vectors),
    }), file_name="item_vectors.parquet")
    artifacts.manifest.update(checkpoint="matcher/model.pt", item_vectors="matcher/item_vectors.parquet",
                              dim=int(artifacts.item_vectors.shape[1]))


def _finish(ctx: RunContext) -> None:
    if ctx.profiles is not None:
        ctx.matcher.manifest["profiles"] = ctx.profiles_record
    # What only the matcher needed: the token states alone can take gigabytes.
    ctx.log = ctx.token_states = ctx.trained = None


STAGE = Stage(NAME, "examples", run=_run, writes=("matcher",), when=_wanted, resumable=True,
              record=lambda ctx: ctx.matcher.manifest, resume=_resume, then=(fusion.STAGE, _save), after=_finish)
