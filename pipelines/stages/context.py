"""What the stages of one run share: its settings, set up before the first stage, and what
each stage produced, set by that stage and read by the ones after it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import ray

from chatrec.catalogue import ItemCatalogue
from chatrec.config import ChatrecConfig
from chatrec.matcher.profiles import UserProfiles
from chatrec.matcher.token_states import TokenStates
from chatrec.matcher.training import finetunes_text
from chatrec.previous_run import PreviousRun
from chatrec.publish import RunOutput
from chatrec.runtime import ActorPlan, ClusterResources
from chatrec.stage_metrics import StageClock
from pipelines.ingest import Inputs
from pipelines.train_matcher import MatcherArtifacts, TrainedMatcher
from pipelines.validate_log import LogValidation


@dataclass(frozen=True)
class MatcherChoice:
    """Where the run's matcher comes from, decided before its stages run: resumed from this
    run's staging, reused from a published run, or trained now."""

    params: dict  # what this config would train (pipelines.train_matcher.model_params)
    record: dict | None = None  # a saved matcher's manifest entry; None: trained now
    reused_from: PreviousRun | None = None  # the published run whose matcher is reused
    state: dict | None = None  # reused: its weights, rows in `saved_ids` order
    saved_ids: list[str] | None = None
    why: str | None = None  # trained now: why (the refresh's reason to retrain)
    plan: ActorPlan | None = None  # trained now: the Ray Train workers

    @property
    def token_layers(self) -> int | None:
        """The encoder layers the matcher finetunes, whose inputs the token-states stage
        computes; None when its encoder is frozen."""
        params = self.record["params"] if self.record is not None else self.params
        return params["text_encoder"]["layers"] if finetunes_text(params) else None


@dataclass
class RunContext:
    # -- set up before the first stage (pipelines.full_run) -----------------------------
    cfg: ChatrecConfig
    output: RunOutput
    clock: StageClock
    started: float  # time.perf_counter() when the run started: the manifest's wall_seconds
    baseline: str | None  # the evaluation baseline this run serves as, if any
    refresh: bool
    done: frozenset[str]  # what an earlier attempt of this run id completed
    previous: PreviousRun | None  # a refresh's previous run (LATEST)
    fingerprint: str  # the encoder's
    dim: int  # the encoder's hidden size

    # -- read+validate ------------------------------------------------------------------
    inputs: Inputs | None = None
    rejects: pa.Table | None = None  # those found in the driver
    # -- validate-log: a log too big for the driver, validated on the cluster --------------
    log_checked: LogValidation | None = None
    # -- item-text ----------------------------------------------------------------------
    texts: pa.Table | None = None  # schemas.ITEM_TEXT, catalogue order
    truncated: int = 0
    # -- cluster: Ray and the actor pools ------------------------------------------------
    resources: ClusterResources | None = None
    enc_plan: ActorPlan | None = None
    topk_plan: ActorPlan | None = None
    precision: str | None = None
    cache_key: str | None = None  # the embedding cache's, for this encoder and its settings
    text_fingerprint: str | None = None  # what the item text vectors come from: a trained matcher is bound to it
    # -- embed-items --------------------------------------------------------------------
    embedding: dict | None = None  # its record: embedded, reused, cache_key
    item_ids: list[str] = field(default_factory=list)
    text_vectors: np.ndarray | None = None  # (n_items, dim)
    # -- embed-profiles -----------------------------------------------------------------
    profiles: UserProfiles | None = None
    profiles_record: dict | None = None
    profile_hashes: list[str] = field(default_factory=list)  # kept when the embedding cache is compacted
    # -- the matcher: choose, token-states, train-matcher, fusion -------------------------
    matcher_choice: MatcherChoice | None = None
    # The matcher stages' working data, let go when train-matcher ends (token states can
    # take gigabytes).
    log: pl.DataFrame | None = None
    token_states: TokenStates | None = None
    trained: TrainedMatcher | None = None  # trained now: what the fusion is tuned from
    matcher: MatcherArtifacts | None = None
    # -- catalogue ----------------------------------------------------------------------
    catalogue: ItemCatalogue | None = None
    catalogue_ref: ray.ObjectRef | None = None
    index_ref: ray.ObjectRef | None = None
    # -- histories: on the cluster, into a work table (pipelines.stages.histories.HISTORIES) --
    buckets: int = 1  # user buckets (chatrec.user_buckets): the histories' and the outputs' partitioning
    users_with_history: int = 0
    users_without_history: int = 0  # the popularity fallback's
    # -- embed-users, top-k, rerank: their records ----------------------------------------
    users_record: dict | None = None
    topk_record: dict | None = None
    rerank: dict | None = None
    # -- publish ------------------------------------------------------------------------
    manifest: dict | None = None

    @property
    def run_id(self) -> str:
        return self.output.run_id

    @property
    def log_rows(self) -> tuple[int, int]:
        """The interaction log's (rows read, valid rows), wherever it was validated."""
        if self.inputs.interactions is not None:
            return self.inputs.interactions.rows_read, self.inputs.interactions.table.num_rows
        return self.log_checked.rows_read, self.log_checked.valid

    @property
    def in_driver_below(self) -> int:
        """Batches this small are encoded in the driver, in a refresh only: a full run's pools
        are what runs at scale, small data or not."""
        return self.cfg.ray.in_driver_below if self.previous is not None else 0

    @property
    def item_vectors(self) -> np.ndarray:
        """What items are scored by: the matcher's item tower, or their text vectors."""
        return self.matcher.item_vectors if self.matcher is not None else self.text_vectors
