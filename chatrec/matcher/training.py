"""Training the two-tower matcher: the loss, one epoch, validation, and the Ray Train loop.

Loss: sampled softmax over in-batch negatives. Each example (a user's history prefix ->
the next item) scores its own target against every other target in the batch; the
logits get the log-popularity correction (log Q: popular items appear as in-batch
negatives more often, which would otherwise push them down), and a candidate that is
one of the user's own training items is masked out: a user's positives are never
negatives.

The Ray Train loop (`train_loop_per_worker`) runs on every worker: DDP over the workers,
examples from the "train" dataset shard, validation NDCG@10 / Recall@10 after each epoch
reported with a checkpoint, early stopping on validation NDCG@10, and resumption from the
checkpoint Ray Train hands back after a failure or a re-run.

With the encoder's top layers finetuned (`params["text_encoder"]`), each step runs them over
the token states of the items it needs (TrainingData.token_states) and they take part in
the model's state dict as `text_top.*`; the user stage never needs them, since it reads
item-tower vectors (`tower_weights`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from chatrec.encoder import PROGRESS_EVERY_S
from chatrec.evaluation.metrics import ndcg_of_topk
from chatrec.matcher.model import TextTop, TwoTower
from chatrec.matcher.sequences import Sequences
from chatrec.matcher.token_states import TokenStates

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # the latest weights
BEST_FILE = "best.pt"  # the weights of the best validation epoch so far
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
VALIDATION_K = 10
# Each epoch's validation scores every item for at most this many validation users (a
# seeded sample), a block at a time: its cost stays bounded however many users the log has.
# The standard error of NDCG@10 over 8,192 users is about 0.003, below what early stopping
# needs to tell epochs apart.
VALIDATION_USERS, VALIDATION_BLOCK, VALIDATION_SEED = 8192, 1024, 0


@dataclass(frozen=True)
class TrainingData:
    """What every worker needs, shipped once through the object store."""

    text: np.ndarray  # (n_items, text_dim) float32: the frozen text-encoder item vectors
    sequences: Sequences  # training sequences (validation items held out)
    valid_users: np.ndarray  # (n_valid,) user indices into `sequences`
    valid_targets: list[np.ndarray]  # n_valid arrays of held-out item rows
    log_q: np.ndarray  # (n_items,) float32 log of each item's share of training targets
    has_id: np.ndarray  # (n_items,) bool: items with training interactions
    # (n_users, text_dim) float32 profile text vectors in `sequences.user_ids` order, a zero
    # row for a user without a profile; None: no profile token.
    profiles: np.ndarray | None = None
    # Each item's token states below the finetuned top layers; None: the encoder is frozen.
    token_states: TokenStates | None = None

    @classmethod
    def build(cls, text: np.ndarray, sequences: Sequences, valid: dict[int, np.ndarray],
              profiles: np.ndarray | None = None, token_states: TokenStates | None = None) -> "TrainingData":
        users, positions = sequences.examples()
        targets = sequences.targets(users, positions)  # (n_examples,) what in-batch candidates are drawn from
        counts = np.bincount(targets, minlength=sequences.n_items).astype(np.float64)  # (n_items,)
        # +1 smoothing: an item never seen as a target still gets a finite correction.
        log_q = np.log((counts + 1.0) / (counts.sum() + sequences.n_items)).astype(np.float32)
        has_id = np.bincount(sequences.items, minlength=sequences.n_items) > 0  # (n_items,)
        valid_users = np.array(sorted(valid), dtype=np.int64)
        return cls(text.astype(np.float32), sequences, valid_users, [valid[u] for u in valid_users], log_q, has_id,
                   None if profiles is None else profiles.astype(np.float32), token_states)

    def profiles_of(self, users: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """users (b,) indices into `sequences` -> (b, text_dim) profile vectors, or None."""
        return None if self.profiles is None else torch.from_numpy(self.profiles[users]).to(device)

    def item_text(self, rows: torch.Tensor, text: torch.Tensor):
        """The item tower's text input for `rows` (m,): their frozen vectors (m, text_dim)
        from `text`, or with a finetuned top their token states (a TokenBatch)."""
        return text[rows] if self.token_states is None else self.token_states.batch(rows, text.device)


# A dense user x item bitmap up to 64M cells (64 MB of bools): a (b, b) lookup is a
# gather. Beyond that, a sorted array of pair keys and a binary search.
DENSE_SEEN_CELLS = 1 << 26


class SeenPairs:
    """Which (user, item) pairs are training interactions, for masking negatives."""

    def __init__(self, sequences: Sequences, device: torch.device | str = "cpu") -> None:
        self.n_items = sequences.n_items
        keys = torch.from_numpy(sequences.pair_keys())  # sorted user * n_items + item
        n_cells = len(sequences.user_ids) * sequences.n_items
        self.dense = None
        if n_cells <= DENSE_SEEN_CELLS:
            self.dense = torch.zeros(n_cells, dtype=torch.bool)
            self.dense[keys] = True
            self.dense = self.dense.view(len(sequences.user_ids), sequences.n_items)
        self.keys = keys.to(device)
        if self.dense is not None:
            self.dense = self.dense.to(device)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (b,), items (b,) -> (b, b): is items[j] one of users[i]'s training items."""
        if self.dense is not None:
            return self.dense[users][:, items]
        return torch.isin(users[:, None] * self.n_items + items[None, :], self.keys)


def read_only_tensor(array: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor over an array that may be read-only (Arrow buffers, the object
    store): the towers only read it, so torch's warning about writes does not apply, and a
    copy would double a catalogue-sized matrix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


TEXT_TOP_PREFIX = "text_top."


def finetunes_text(params: dict) -> bool:
    """Whether these matcher params finetune the encoder's top layers."""
    return bool(params.get("text_encoder"))


def tower_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict without the finetuned text top: the towers alone, as scoring loads them."""
    return {k: v for k, v in state_dict.items() if not k.startswith(TEXT_TOP_PREFIX)}


def text_top_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(TEXT_TOP_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TEXT_TOP_PREFIX)}


def build_model(*, n_items: int, text_dim: int, params: dict, text_top: TextTop | None = None) -> TwoTower:
    """The towers of `params`; `text_top` only for training a finetuned text encoder."""
    return TwoTower(
        n_items=n_items,
        text_dim=text_dim,
        dim=params["dim"],
        max_history=params["max_history"],
        heads=params["heads"],
        layers=params["layers"],
        dropout=params["dropout"],
        temperature=params["temperature"],
        # Absent from the params of matchers saved before these existed: they had none.
        id_dropout=params.get("id_dropout", 0.0),
        profile=params.get("profile", False),
        text_top=text_top,
    )


def build_optimizer(model: TwoTower, params: dict) -> torch.optim.Optimizer:
    """AdamW; a finetuned text top learns at the encoder's own, lower rate."""
    top = [p for name, p in model.named_parameters() if name.startswith(TEXT_TOP_PREFIX)]
    rest = [p for name, p in model.named_parameters() if not name.startswith(TEXT_TOP_PREFIX)]
    groups = [{"params": rest}] + ([{"params": top, "lr": params["text_encoder"]["lr"]}] if top else [])
    return torch.optim.AdamW(groups, lr=params["lr"], weight_decay=params["weight_decay"])


def finetuned_text(state_dict: dict[str, torch.Tensor], token_states: TokenStates, chunk: int = 1024) -> np.ndarray:
    """Every item's text vector from the finetuned top in `state_dict`: (n_items, text_dim)."""
    top = TextTop.above(token_states)
    top.load_state_dict(text_top_weights(state_dict))
    return text_vectors(top, token_states, chunk).numpy()


@torch.no_grad()
def text_vectors(top: TextTop, token_states: TokenStates, chunk: int = 1024, device="cpu") -> torch.Tensor:
    """Every item through a text top: (n_items, text_dim)."""
    was_training = top.training
    top.eval()
    rows = torch.arange(token_states.n_items)
    out = torch.cat([top.encode(token_states.batch(rows[i : i + chunk], device)) for i in range(0, len(rows), chunk)])
    top.train(was_training)
    return out


def in_batch_loss(
    logits: torch.Tensor, users: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor, seen_keys: "SeenPairs",
) -> torch.Tensor:
    """Sampled softmax with log-Q correction; each user's own items are never negatives.

    logits (b, b) user i x target j; users, targets (b,).
    """
    own = seen_keys.contains(users, targets) | (targets[None, :] == targets[:, None])  # (b, b)
    own.fill_diagonal_(False)  # the example's own target stays the positive
    corrected = (logits - log_q[targets][None, :]).masked_fill(own, float("-inf"))  # (b, b)
    return F.cross_entropy(corrected, torch.arange(len(users), device=logits.device))


def run_epoch(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TrainingData, text: torch.Tensor,
    examples: tuple[np.ndarray, np.ndarray], *, batch_size: int, max_history: int, rng: np.random.Generator,
    seen_keys: "SeenPairs", log_q: torch.Tensor, progress: str | None = None,
) -> float:
    """One pass over `examples` (user, position) in a random order; returns the mean loss.
    With `progress` (a label), a line every PROGRESS_EVERY_S seconds says how far it is."""
    model.train()
    users, positions = examples
    order = rng.permutation(len(users))
    losses = []
    last_report = time.monotonic()
    for start in range(0, len(order), batch_size):
        if progress and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            logger.info("%s: %d of %d examples, loss %.4f", progress, start, len(order), np.mean(losses[-10:]))
            last_report = time.monotonic()
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue  # a softmax over one candidate teaches nothing
        device = text.device
        hist = torch.from_numpy(data.sequences.histories(users[idx], positions[idx], max_history)).to(device)  # (b, L)
        target = torch.from_numpy(data.sequences.targets(users[idx], positions[idx])).to(device)  # (b,)
        if data.sequences.n_items <= hist.numel() and data.token_states is None:
            # A small catalogue: every item through the item tower is cheaper than finding
            # the batch's distinct items (not so through a finetuned text top).
            rows = torch.arange(data.sequences.n_items, device=device)
            logits = model(text, rows, hist, target, data.profiles_of(users[idx], device))  # (b, b)
        else:
            # The batch's distinct items, each through the item tower once.
            rows, inverse = torch.unique(torch.cat([hist.flatten(), target]), return_inverse=True)  # (m,), (b*L + b,)
            local = torch.where(hist.flatten() >= 0, inverse[: hist.numel()], -1).view_as(hist)  # (b, L)
            valid_rows = rows.clamp(min=0)  # -1 (padding) maps to a real row it never reads
            logits = model(data.item_text(valid_rows, text), valid_rows, local, inverse[hist.numel():],
                           data.profiles_of(users[idx], device))  # (b, b)
        loss = in_batch_loss(logits, torch.from_numpy(users[idx]).to(device), target, log_q, seen_keys)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def item_vectors(model: TwoTower, text: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Every item through the item tower: (n_items, dim)."""
    model.eval()
    rows = torch.arange(text.shape[0], device=text.device)
    return torch.cat([model.items(text[rows[i : i + chunk]], rows[i : i + chunk]) for i in range(0, len(rows), chunk)])


@torch.no_grad()
def text_only_vectors(model: TwoTower, text: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Every item through the item tower without its id vector: (n_items, dim)."""
    model.eval()
    return torch.cat([model.text_only(text[i : i + chunk]) for i in range(0, text.shape[0], chunk)])


@torch.no_grad()
def user_vectors(
    model: TwoTower, items: torch.Tensor, histories: np.ndarray, profiles: np.ndarray | None = None, chunk: int = 4096,
) -> torch.Tensor:
    """items (n_items, dim) item-tower vectors, (n, L) newest-first histories and optionally
    (n, text_dim) profile vectors (zero rows: none) -> (n, dim)."""
    model.eval()
    out = []
    for i in range(0, len(histories), chunk):
        hist = torch.from_numpy(histories[i : i + chunk]).to(items.device)  # (c, L)
        profile = torch.from_numpy(profiles[i : i + chunk]).to(items.device) if profiles is not None else None  # (c, t)
        out.append(model.users(items[hist.clamp(min=0)], hist < 0, profile))
    return torch.cat(out) if out else torch.zeros(0, model.dim, device=items.device)


@torch.no_grad()
def validate(model: TwoTower, data: TrainingData, text: torch.Tensor, *, max_history: int) -> dict[str, float]:
    """NDCG@10 and Recall@10 of the held-out items, training items excluded (full ranking),
    over `validation_sample` of the validation users, a block of users at a time."""
    seqs = data.sequences
    sample = validation_sample(len(data.valid_users))  # (n,) positions in valid_users
    if len(sample) == 0:
        return {"ndcg@10": 0.0, "recall@10": 0.0}
    if model.text_top is not None:
        text = text_vectors(model.text_top, data.token_states, device=text.device)  # (n_items, text_dim)
    items = item_vectors(model, text)  # (n_items, dim)
    tops = []
    for start in range(0, len(sample), VALIDATION_BLOCK):
        users = data.valid_users[sample[start : start + VALIDATION_BLOCK]]  # (b,)
        hist = seqs.histories(users, seqs.lengths[users], max_history)  # (b, L)
        profiles = data.profiles[users] if data.profiles is not None else None  # (b, text_dim)
        scores = user_vectors(model, items, hist, profiles) @ items.T  # (b, n_items)
        lengths = seqs.lengths[users]  # (b,)
        owners = np.repeat(np.arange(len(users)), lengths)  # (n_seen,)
        # Each user's training items: the ranges offsets[u] .. offsets[u] + lengths[u] of seqs.items.
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (n_seen,)
        seen = seqs.items[np.repeat(seqs.offsets[users], lengths) + within]  # (n_seen,)
        scores[torch.from_numpy(owners).to(scores.device), torch.from_numpy(seen).to(scores.device)] = float("-inf")
        tops.append(torch.topk(scores, min(VALIDATION_K, scores.shape[1]), dim=1).indices.cpu().numpy())  # (b, k)
    top = np.concatenate(tops)  # (n, k)
    targets = [data.valid_targets[i] for i in sample]
    recall = np.mean([np.isin(t, row).sum() / len(t) for row, t in zip(top, targets)])
    return {"ndcg@10": ndcg_of_topk(top, targets, VALIDATION_K), "recall@10": float(recall)}


def validation_sample(n_valid: int) -> np.ndarray:
    """Which validation users each epoch scores: all of them up to VALIDATION_USERS, else the
    same seeded sample every epoch (and on every worker)."""
    if n_valid <= VALIDATION_USERS:
        return np.arange(n_valid)
    return np.sort(np.random.default_rng(VALIDATION_SEED).choice(n_valid, VALIDATION_USERS, replace=False))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker loop. `config` holds the TrainingData object ref and params."""
    import ray
    import ray.train
    import ray.train.torch

    params = config["params"]
    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    data: TrainingData = ray.get(config["data"])
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
    text_top = TextTop.above(data.token_states) if finetunes_text(params) else None
    torch.manual_seed(params["seed"])  # identical initial weights on every worker
    model = build_model(n_items=data.sequences.n_items, text_dim=data.text.shape[1], params=params, text_top=text_top)
    model.has_id.copy_(read_only_tensor(data.has_id))
    if rank == 0:
        from chatrec.entrypoint import configure_logging

        configure_logging()  # a Ray worker's root logger has no handler: its progress lines would be lost

    state = {"epoch": -1, "best_epoch": -1, "best": -1.0, "history": []}
    best_state = None
    # Ray Train's own (after a worker failure, or its snapshot of an earlier driver's run),
    # else the one the driver found in storage.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint.from_directory(config["resume_from"])
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            model.load_state_dict(torch.load(os.path.join(path, MODEL_FILE), weights_only=True, map_location="cpu"))
            optimizer_state = torch.load(os.path.join(path, OPTIMIZER_FILE), weights_only=True, map_location=device)
            best_state = torch.load(os.path.join(path, BEST_FILE), weights_only=True, map_location="cpu")
            with open(os.path.join(path, STATE_FILE)) as f:
                state = json.load(f)
        logger.info("matcher: resuming after epoch %d", state["epoch"])
    ddp = ray.train.torch.prepare_model(model)  # moves the model to `device`
    module: TwoTower = ddp.module if hasattr(ddp, "module") else ddp
    # Built after the move, so its state lives on the model's device.
    optimizer = build_optimizer(module, params)
    if checkpoint is not None:
        optimizer.load_state_dict(optimizer_state)

    # This worker's examples: its shard of (user, position) pairs.
    shard = ray.train.get_dataset_shard("train")
    parts = list(shard.iter_batches(batch_format="numpy", batch_size=65536))
    examples = (
        np.concatenate([p["user"] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
        np.concatenate([p["position"] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
    )
    text = torch.from_numpy(data.text).to(device)
    seen_keys = SeenPairs(data.sequences, device)
    log_q = torch.from_numpy(data.log_q).to(device)
    fail_at = config.get("fail_once_at_epoch")  # test hook: simulates a worker crash

    # Where each attempt started: [0] for one uninterrupted run, [0, 3] after a resume at 3.
    state.setdefault("starts", []).append(state["epoch"] + 1)
    # A restored run that had already stopped trains no further.
    first = params["max_epochs"] if state.get("done") else state["epoch"] + 1
    for epoch in range(first, params["max_epochs"]):
        if fail_at is not None and epoch == fail_at and rank == 0 and not os.path.exists(config["fail_marker"]):
            open(config["fail_marker"], "w").close()
            raise RuntimeError(f"simulated worker failure at epoch {epoch}")
        started = time.perf_counter()
        rng = np.random.default_rng(params["seed"] * 1000 + epoch * world + rank)
        loss = run_epoch(ddp, optimizer, data, text, examples, batch_size=params["batch_size"],
                         max_history=params["max_history"], rng=rng, seen_keys=seen_keys, log_q=log_q,
                         progress=f"matcher: epoch {epoch}" if rank == 0 else None)
        # Every worker holds the same weights after DDP's all-reduce, so every worker
        # reaches the same validation result and the same early-stopping decision.
        metrics = validate(module, data, text, max_history=params["max_history"])
        # Without validation users every epoch counts as the best: the last weights are kept.
        if metrics["ndcg@10"] > state["best"] or len(data.valid_users) == 0:
            state["best"], state["best_epoch"] = metrics["ndcg@10"], epoch
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        state["epoch"] = epoch
        loss = loss if np.isfinite(loss) else None  # JSON has no NaN
        state["history"].append({"epoch": epoch, "loss": loss, **metrics, "seconds": time.perf_counter() - started})
        stop = epoch - state["best_epoch"] >= params["patience"] or epoch == params["max_epochs"] - 1
        if rank == 0:
            logger.info("matcher: epoch %d: loss %s, validation NDCG@10 %.4f, Recall@10 %.4f (%.1f s)%s",
                        epoch, f"{loss:.4f}" if loss is not None else "-", metrics["ndcg@10"], metrics["recall@10"],
                        state["history"][-1]["seconds"], ", stopping" if stop else "")
        state["done"] = stop
        report = {"epoch": epoch, "loss": loss, **metrics, "best_ndcg@10": state["best"], "done": stop}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({k: v.cpu() for k, v in module.state_dict().items()}, os.path.join(tmp, MODEL_FILE))
                torch.save(optimizer.state_dict(), os.path.join(tmp, OPTIMIZER_FILE))
                torch.save(best_state, os.path.join(tmp, BEST_FILE))
                with open(os.path.join(tmp, STATE_FILE), "w") as f:
                    json.dump(state, f)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint)
        if stop:
            break
