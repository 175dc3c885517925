"""The matcher training stage: interaction log + item text vectors -> trained two towers.

    1. hold out each user's latest interactions for validation (chatrec.evaluation.splits)
    2. sequences and (history prefix -> next item) examples from the rest
    3. Ray Train: TorchTrainer over `plan.num_actors` workers (DDP), examples as a Ray Data
       dataset sharded across them, a checkpoint per epoch, early stopping on validation
       NDCG@10, FailureConfig for worker failures
    4. load the best epoch's weights (weights_only) from the last checkpoint

Checkpoints live under `storage/name`. A re-run with the same name resumes from the
latest checkpoint found there: Ray Train restores its own snapshot of the run, and the
checkpoint we found is also handed to the workers explicitly (some Ray versions ignored a
previous driver's checkpoints on restart). A finished training is not repeated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import ray
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from chatrec.config import MatcherConfig
from chatrec.errors import ConfigError, InputDataError
from chatrec.evaluation.splits import split_user_time
from chatrec.matcher.profiles import UserProfiles
from chatrec.matcher.sequences import build_sequences
from chatrec.matcher.token_states import TokenStates
from chatrec.matcher.training import BEST_FILE, STATE_FILE, TrainingData, finetunes_text, train_loop_per_worker
from chatrec.runtime import ActorPlan

logger = logging.getLogger(__name__)

# Users shorter than this keep every interaction for training: with 2 items, holding one out
# leaves a single-item history, which teaches little and validates noisily.
MIN_LENGTH_FOR_VALIDATION = 3
TRAIN_POLL_ENV, TRAIN_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
MODEL_PARAMS = ("dim", "max_history", "heads", "layers", "dropout", "temperature", "lr", "weight_decay",
                "batch_size", "max_epochs", "patience", "seed", "id_dropout")


def model_params(cfg: MatcherConfig, profile: bool) -> dict:
    """The matcher's parameters as its manifest records them (a change means retraining).
    `text_encoder` is there only when the encoder's top layers are finetuned."""
    finetune = {"text_encoder": {"mode": "finetune", "layers": cfg.finetune_layers, "lr": cfg.encoder_lr}}
    return {**{k: getattr(cfg, k) for k in MODEL_PARAMS}, "profile": profile,
            **(finetune if cfg.text_encoder == "finetune" else {})}


@dataclass(frozen=True)
class TrainedMatcher:
    state_dict: dict[str, torch.Tensor]  # the best validation epoch's weights
    params: dict
    state: dict  # epoch, best_epoch, best (validation NDCG@10), per-epoch history
    data: TrainingData  # what it was trained and validated on (fusion is tuned on the same)
    train_log: pl.DataFrame
    valid_log: pl.DataFrame  # the held-out interactions
    workers: str
    seconds: float
    new_item_share: float = 0.0  # of the known items that pretend to be new when the fusion is tuned

    def manifest(self) -> dict:
        best = next(h for h in self.state["history"] if h["epoch"] == self.state["best_epoch"])
        return {
            "params": self.params,
            "best_epoch": self.state["best_epoch"],
            "epochs_run": len(self.state["history"]),
            "validation": {"ndcg@10": best["ndcg@10"], "recall@10": best["recall@10"],
                           "users": int(len(self.data.valid_users))},
            "history": self.state["history"],
            "workers": self.workers,
            "train_seconds": round(self.seconds, 3),
        }


def hold_out(log: pl.DataFrame, share: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each user's latest `share` of interactions (at least one, for users with enough) -> valid."""
    split = split_user_time(log.select("user_id", "item_id", "timestamp"), (1.0 - share, share, 0.0))
    train, valid = pl.from_arrow(split.train), pl.from_arrow(split.valid)
    short = train.group_by("user_id").len().filter(pl.col("len") < MIN_LENGTH_FOR_VALIDATION - 1)["user_id"]
    if short.len():
        # Users too short to validate on give their held-out rows back to training.
        back = valid.filter(pl.col("user_id").is_in(short.implode()))
        train, valid = pl.concat([train, back]), valid.join(back, on=["user_id", "item_id", "timestamp"], how="anti")
    return train, valid


def training_data(
    text: np.ndarray, item_rows: dict[str, int], train: pl.DataFrame, valid: pl.DataFrame,
    profiles: UserProfiles | None = None, token_states: TokenStates | None = None,
) -> TrainingData:
    seqs = build_sequences(train, item_rows, len(item_rows))
    user_index = {u: i for i, u in enumerate(seqs.user_ids)}
    targets: dict[int, list[int]] = {}
    for user, item in valid.select("user_id", "item_id").iter_rows():
        if user in user_index and item in item_rows:
            targets.setdefault(user_index[user], []).append(item_rows[item])
    # A held-out item the user already has in training can never be recommended to them:
    # it is not a target (as in evaluation); a user left with none is not validated on.
    fresh = {}
    for u, items in targets.items():
        own = seqs.items[seqs.offsets[u] : seqs.offsets[u + 1]]
        kept = np.setdiff1d(np.array(items, np.int64), own)
        if len(kept):
            fresh[u] = kept
    return TrainingData.build(text, seqs, fresh, profiles.of_users(seqs.user_ids) if profiles is not None else None,
                              token_states)


def latest_checkpoint(storage: str, name: str) -> Checkpoint | None:
    """The checkpoint of the highest epoch recorded under storage/name (local storage)."""
    root = os.path.join(storage, name)
    if not os.path.isdir(root):
        return None
    best, best_epoch = None, -1
    for entry in os.listdir(root):
        state = os.path.join(root, entry, STATE_FILE)
        if entry.startswith("checkpoint") and os.path.exists(state):
            with open(state) as f:
                epoch = json.load(f)["epoch"]
            if epoch > best_epoch:
                best, best_epoch = os.path.join(root, entry), epoch
    return Checkpoint.from_directory(best) if best else None


def train_matcher(
    *,
    text: np.ndarray,
    item_ids: list[str],
    log: pl.DataFrame,
    cfg: MatcherConfig,
    plan: ActorPlan,
    storage: str,
    name: str,
    profiles: UserProfiles | None = None,
    token_states: TokenStates | None = None,
    fault_injection: dict | None = None,
) -> TrainedMatcher:
    """Train on `log` (user_id, item_id, timestamp) with item text vectors `text` (n_items, d)
    and, given `profiles`, a profile token in the user tower. With `cfg.text_encoder`
    finetune, `token_states` (chatrec.matcher.token_states) feed the encoder's top layers.

    `fault_injection` (tests only) makes a worker crash once, e.g.
    {"fail_once_at_epoch": 1, "fail_marker": "/tmp/x"}.
    """
    started = time.perf_counter()
    item_rows = {item: row for row, item in enumerate(item_ids)}
    # 1. validation hold-out  2. sequences and examples
    params = model_params(cfg, profiles is not None)
    if finetunes_text(params) and (token_states is None or token_states.top_layers != cfg.finetune_layers):
        raise ValueError("matcher.text_encoder finetune needs token states below its top layers")  # caller's bug
    train, valid = hold_out(log, cfg.validation_share)
    data = training_data(text, item_rows, train, valid, profiles, token_states if finetunes_text(params) else None)
    users, positions = data.sequences.examples()
    if len(users) < 2:
        raise InputDataError(
            f"the matcher needs users with at least 2 interactions to learn from; this log gives "
            f"{len(users)} training example(s): add interactions or set matcher.enabled: false"
        )
    examples = ray.data.from_arrow(pa.table({"user": users, "position": positions}))
    if cfg.dim % cfg.heads:
        raise ConfigError(f"matcher.dim ({cfg.dim}) must be divisible by matcher.heads ({cfg.heads})")
    logger.info(
        "matcher: %d training examples, %d validation users, %s",
        len(users), len(data.valid_users), plan.describe(),
    )

    # 3. Ray Train
    storage = storage if "://" in storage else os.path.abspath(storage)
    resume = latest_checkpoint(storage, name)
    if resume is not None:
        logger.info("matcher: resuming from %s", resume.path)
    # Ray Train's controller polls its workers every 2 s by default, and every
    # ray.train.report (one per epoch) waits for that poll: 2 s an epoch, about 10% of a
    # MovieLens-100K epoch on 2 cores and nearly all of a small log's. Ray hands this
    # variable from the driver to the controller; a value the user set wins.
    os.environ.setdefault(TRAIN_POLL_ENV, TRAIN_POLL_S)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "params": params, "data": ray.put(data), "threads": plan.threads,
            "resume_from": resume.path if resume is not None else None, **(fault_injection or {}),
        },
        scaling_config=ScalingConfig(
            num_workers=plan.num_actors,
            use_gpu=plan.device == "cuda",
            resources_per_worker={"CPU": plan.num_cpus, **({"GPU": 1} if plan.device == "cuda" else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            # The last two are enough to resume; every checkpoint carries the best weights.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": examples},
    )
    state = _state_of(resume)
    if not (state and state.get("done")):
        result = fit_interruptibly(trainer)
        if result.checkpoint is None:
            raise RuntimeError(f"matcher training ended without a checkpoint: {result.error}")
        resume = result.checkpoint

    # 4. the best epoch's weights
    with resume.as_directory() as path:
        state_dict = torch.load(os.path.join(path, BEST_FILE), weights_only=True, map_location="cpu")
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
    return TrainedMatcher(state_dict, params, state, data, train, valid, plan.describe(), time.perf_counter() - started,
                          cfg.new_item_validation_share)


def fit_interruptibly(trainer: TorchTrainer):
    """trainer.fit() from a thread of its own, the driver's main thread waiting on it.

    On the main thread Ray Train installs a SIGINT handler of its own for good: Ctrl-C would
    abort training, and the job would end with exit 0 or 1 and no word, or go on without
    the matcher. From another thread it installs none, so Ctrl-C reaches the driver as
    KeyboardInterrupt (exit 130, "interrupted"); exiting tears the training down with the job.
    """
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # handed to the main thread, raised there
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="chatrec-train", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _state_of(checkpoint: Checkpoint | None) -> dict | None:
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as path:
        with open(os.path.join(path, STATE_FILE)) as f:
            return json.load(f)


@dataclass(frozen=True)
class MatcherArtifacts:
    """What the scoring stages take from a trained matcher."""

    item_vectors: np.ndarray  # (n_items, dim) the item tower's vectors, catalogue order
    state_dict: dict  # every weight, a finetuned text top's included: matcher/model.pt
    user_tower: dict  # MatcherUserEncoder's `matcher` argument: the towers' weights and shape
    fusion: dict | None  # Recommender's `fusion` argument, or None for two-tower scores alone
    manifest: dict


def tower_text(state_dict: dict, params: dict, text: np.ndarray, token_states: TokenStates | None) -> np.ndarray:
    """What the item tower reads: the frozen text vectors `text` (n_items, d), or with a
    finetuned encoder top the vectors it computes from the catalogue's token states."""
    from chatrec.matcher.training import finetuned_text

    if not finetunes_text(params):
        return text
    if token_states is None or token_states.n_items != len(text):
        raise ValueError("a matcher with a finetuned encoder top needs the catalogue's token states")  # caller's bug
    return finetuned_text(state_dict, token_states)


def _towers(state_dict: dict, params: dict, n_items: int, text_dim: int):
    from chatrec.matcher.training import build_model, tower_weights

    model = build_model(n_items=n_items, text_dim=text_dim, params=params)
    model.load_state_dict(tower_weights(state_dict))
    return model


def matcher_artifacts(
    trained: TrainedMatcher, *, text: np.ndarray, item_ids: list[str], log: pl.DataFrame, fusion: str,
    profiles: UserProfiles | None = None,
) -> MatcherArtifacts:
    """Item-tower vectors for the catalogue, the user tower's spec, and (optionally) the
    fusion with a recency-weighted collaborative partner (EASE, or its low-rank relative
    where EASE does not fit or validates worse) tuned on the same validation hold-out. `profiles`:
    the ones it was trained with, if any. `text` are the frozen text vectors: the fusion's
    zero-shot text score reads them whether or not the towers' encoder top was finetuned."""
    from chatrec.matcher.fusion import collaborative_model, tune_fusion
    from chatrec.matcher.training import item_vectors, read_only_tensor, text_only_vectors, user_vectors

    model = _towers(trained.state_dict, trained.params, len(item_ids), text.shape[1])
    towers_text = read_only_tensor(tower_text(trained.state_dict, trained.params, text, trained.data.token_states))
    items = item_vectors(model, towers_text)  # (n_items, dim)
    spec = _user_tower_spec(trained.state_dict, trained.params, len(item_ids), text, profiles)
    manifest = trained.manifest()
    fused = None
    if fusion == "auto":
        seqs = trained.data.sequences
        index = {u: i for i, u in enumerate(seqs.user_ids)}

        text_only = text_only_vectors(model, towers_text)  # (n_items, dim)

        def tower_scores_of(user_ids: list[str], against: torch.Tensor = items) -> np.ndarray:
            users = np.array([index[u] for u in user_ids], dtype=np.int64)
            hist = seqs.histories(users, seqs.lengths[users], trained.params["max_history"])  # (n, L)
            profile = trained.data.profiles[users] if trained.data.profiles is not None else None  # (n, text_dim)
            return (user_vectors(model, items, hist, profile) @ against.T).numpy()  # (n, n_items)

        has_id = trained.state_dict["has_id"].numpy()  # (n_items,)
        new_items = {"text": text, "has_id": has_id, "share": trained.new_item_share, "seed": trained.params["seed"],
                     "text_only_scores_of": lambda user_ids: tower_scores_of(user_ids, text_only)}
        tuned = tune_fusion(train_log=trained.train_log, valid_log=trained.valid_log, item_ids=item_ids,
                            tower_scores_of=tower_scores_of, new_items=new_items)
        fused = {"fusion": tuned, "collaborative": collaborative_model(log, item_ids, tuned),
                 "text": text, "id_less": ~has_id}
        manifest["fusion"] = tuned.manifest()
    return MatcherArtifacts(items.numpy(), trained.state_dict, spec, fused, manifest)


def _user_tower_spec(state_dict: dict, params: dict, n_items: int, text: np.ndarray,
                     profiles: UserProfiles | None) -> dict:
    """MatcherUserEncoder's `matcher` argument: it reads item-tower vectors, so a finetuned
    text top stays out of what its actors receive."""
    from chatrec.matcher.training import tower_weights

    return {"state_dict": tower_weights(state_dict), "params": params, "n_items": n_items, "text_dim": int(text.shape[1]),
            "profiles": profiles.for_serving() if profiles is not None and params.get("profile") else None}


def remap_item_rows(state_dict: dict[str, torch.Tensor], saved_ids: list[str], item_ids: list[str]) -> dict:
    """A state dict trained on catalogue `saved_ids` -> the same model on `item_ids`.

    Only the id embedding and its `has_id` mask are per item: an item both catalogues share
    keeps its learned id vector; a new item gets none (its text places it, as for any item
    without training interactions); a removed item's row is dropped.
    """
    if saved_ids == item_ids:
        return state_dict
    old_row = {item: row for row, item in enumerate(saved_ids)}
    kept_new = [row for row, item in enumerate(item_ids) if item in old_row]  # rows in item_ids
    kept_old = torch.tensor([old_row[item_ids[row]] for row in kept_new], dtype=torch.long)
    kept_new = torch.tensor(kept_new, dtype=torch.long)
    weight = state_dict["item_ids.weight"]  # (n_saved, dim)
    ids = torch.zeros(len(item_ids), weight.shape[1], dtype=weight.dtype)  # (n_items, dim)
    ids[kept_new] = weight[kept_old]
    has_id = torch.zeros(len(item_ids), dtype=torch.bool)  # (n_items,)
    has_id[kept_new] = state_dict["has_id"][kept_old]
    return {**state_dict, "item_ids.weight": ids, "has_id": has_id}


def saved_matcher(
    *, state_dict: dict[str, torch.Tensor], saved_ids: list[str], record: dict,
    text: np.ndarray, item_ids: list[str], log: pl.DataFrame, profiles: UserProfiles | None = None,
    token_states: TokenStates | None = None,
) -> MatcherArtifacts:
    """Artifacts of a matcher trained earlier (`record`: its manifest entry, `saved_ids`: the
    catalogue it was saved with) for the current catalogue and log: item vectors recomputed
    from the current texts (through its finetuned encoder top, if it has one: then
    `token_states` of the current catalogue), the fusion's tuned weight and scales kept, and
    EASE refit on `log` (the fit is deterministic, so a resumed run scores exactly as an
    uninterrupted one)."""
    from chatrec.matcher.fusion import Fusion, collaborative_model
    from chatrec.matcher.training import item_vectors, read_only_tensor

    params = record["params"]
    state_dict = remap_item_rows(state_dict, saved_ids, item_ids)
    model = _towers(state_dict, params, len(item_ids), text.shape[1])
    towers_text = tower_text(state_dict, params, text, token_states)  # (n_items, d)
    with torch.no_grad():
        items = item_vectors(model, read_only_tensor(towers_text)).numpy()  # (n_items, dim)
    spec = _user_tower_spec(state_dict, params, len(item_ids), text, profiles)
    fused = None
    if record.get("fusion") and "tower_scale" in record["fusion"]:
        fusion = Fusion.from_manifest(record["fusion"])
        # A new item of this catalogue has no id vector (remap_item_rows): the new-item term.
        fused = {"fusion": fusion, "collaborative": collaborative_model(log, item_ids, fusion),
                 "text": text, "id_less": ~state_dict["has_id"].numpy()}
    return MatcherArtifacts(items, state_dict, spec, fused, dict(record))
