"""The full job: inputs in, published top-K recommendations out, as a list of stages.

Before the first stage: the output's lock and the staging directory (resumed if an earlier
attempt was cut short). Then `RUN`, one file per stage in pipelines/stages/:

    1. read+validate    inputs read and checked (rejects kept)
    2. item-text        item texts rendered
       (cluster)        Ray joined or started, the actor pools sized: after the inputs,
                        so bad input is reported without waiting for Ray
       validate-log     a log too big for the driver: Ray tasks validate it chunk by chunk
    3. embed-items      Ray Data encoder actors; the embedding cache serves unchanged texts
    4. the matcher, with matcher.enabled:
         embed-profiles   the users table's profile texts, same encoder
         (choose)         resumed, reused (a refresh, matcher.from_run) or trained now
         token-states     with a finetuned encoder top: the catalogue's states below it
         train-matcher    Ray Train, then fusion when trained here; its item tower's
                          vectors replace the text vectors
       (catalogue)      the catalogue and its index, into the object store
    5. histories        each user's history and the key of what their vector comes from
    6. embed-users      Ray Data user-tower actors; a refresh reuses unchanged users' vectors
    7. top-k            Ray Data FAISS actors, reasons, popularity fallback
    8. rerank           with rerank.enabled: a language model orders the top N into the top K
    9. publish          rejects and manifest, then the atomic commit; retention

In parentheses: driver steps, untimed and not in the manifest. `REFRESH` is the same
list; `TRAIN` (`chatrec train`) stops after the matcher and publishes it.

embed-items, train-matcher, embed-users, top-k and rerank end with a completion marker
(chatrec.publish): a re-run of the same run id after a crash skips what is marked and
redoes the rest (pipelines.stage_runner). The others are always redone; a resumed attempt
must read the inputs the first one read (checked after item-text).

`refresh=True` is the nightly refresh: the run LATEST names is the previous run, its
matcher is reused unless `refresh.retrain` says otherwise, and users whose inputs did not
change keep their vectors. Top-K is always recomputed for every user (new items may enter
anyone's list).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from transformers import AutoConfig

from chatrec.config import ChatrecConfig
from chatrec.encoder import import_model_code
from chatrec.errors import ConfigError, PublishError
from chatrec.manifest import new_run_id
from chatrec.model_loading import model_fingerprint, resolve_model_dir
from chatrec.output_lock import OutputLock
from chatrec.previous_run import PreviousRun
from chatrec.publish import RunOutput, storage_refusal
from chatrec.retention import prune_runs
from chatrec.stage_metrics import StageClock
from pipelines.stage_runner import StageRunner
from pipelines.stages import (
    catalogue, cluster, embed_items, embed_profiles, embed_users, histories, item_text, publish, read_validate, rerank, top_k,
    token_states, train_matcher, validate_log,
)
from pipelines.stages.context import RunContext

logger = logging.getLogger(__name__)

# Each runs only when the config asks for it (the stage's `when`).
MATCHER = (
    embed_profiles.STAGE,  # with a users table
    train_matcher.choose,  # driver step: resumed, reused or trained now
    token_states.STAGE,  # with a finetuned encoder top
    train_matcher.STAGE,  # then fusion, when trained here
)
RUN = (
    read_validate.STAGE,
    item_text.STAGE,
    cluster.connect,  # driver step
    validate_log.STAGE,  # a log too big for the driver
    embed_items.STAGE,
    *MATCHER,
    catalogue.build,  # driver step
    histories.STAGE,
    embed_users.STAGE,
    top_k.STAGE,
    rerank.STAGE,  # with rerank.enabled
    publish.STAGE,
)
REFRESH = RUN  # the same stages: what they reuse comes from the previous run (RunContext.previous)
TRAIN = (read_validate.STAGE, item_text.STAGE, cluster.connect, validate_log.STAGE, embed_items.STAGE, *MATCHER,
         publish.MATCHER)


@dataclass(frozen=True)
class RunResult:
    run_id: str
    run_dir: str  # where the published run lives
    manifest: dict


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
            try:
                result = _run(cfg, output, baseline=baseline, refresh=refresh, train_only=train_only)
            except Exception as e:
                why = storage_refusal(e)
                if why is None or not output.refuses_writes():
                    raise
                raise PublishError(
                    f"the output {root} could not be written ({why}): nothing was published, and the run so far "
                    f"is kept in {output.staging_dir}. Free space or make it writable, then run the same run id "
                    f"again ({output.run_id}) to resume"
                ) from e
        if cfg.output.keep is not None:
            result.manifest["retention"] = {"keep": cfg.output.keep, "deleted": prune_runs(root, cfg.output.keep)}
    return result


def _run(cfg: ChatrecConfig, output: RunOutput, *, baseline: str | None, refresh: bool,
         train_only: bool = False) -> RunResult:
    ctx = _start(cfg, output, baseline=baseline, refresh=refresh)
    StageRunner(output, ctx.clock, ctx.done).run(TRAIN if train_only else REFRESH if refresh else RUN, ctx)
    return RunResult(run_id=output.run_id, run_dir=output.published_path(), manifest=ctx.manifest)


def _start(cfg: ChatrecConfig, output: RunOutput, *, baseline: str | None, refresh: bool) -> RunContext:
    """The model's files and the staging directory (resumed if an attempt was cut short)."""
    started = time.perf_counter()
    model_dir = resolve_model_dir(cfg.encoder.model)
    if refresh and cfg.ray.in_driver_below:
        # A refresh encodes its few changed items here: import the model code while Ray starts.
        threading.Thread(target=import_model_code, args=(model_dir,), daemon=True).start()
    done = frozenset(output.prepare(config_sha256=cfg.sha256()))
    previous = PreviousRun.latest(cfg.output.path) if refresh else None
    if refresh:
        logger.info("refresh: previous run %s", previous.run_id if previous else "none (first run: everything computed)")
    return RunContext(
        cfg=cfg, output=output, clock=StageClock(), started=started, baseline=baseline, refresh=refresh, done=done,
        previous=previous, fingerprint=model_fingerprint(model_dir),
        dim=int(AutoConfig.from_pretrained(model_dir).hidden_size),
    )
