"""SASRec's network, its fitted form and its training loop (torch; see chatrec.baselines.sasrec)."""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from chatrec.baselines.base import EarlyStopping, FittedBaseline
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.baselines.sasrec import PADDING, ItemSequences, item_sequences
from chatrec.progress import PROGRESS_EVERY_S

logger = logging.getLogger(__name__)

# The full softmax computes (positions x items) float32 logits, and keeps them (and their
# gradient) for the backward pass. Past 2^25 cells (128 MiB) a batch's positions go in
# chunks whose logits are recomputed in the backward pass instead of kept: MovieLens-100K
# (128 x 50 positions x 1,682 items = 2^23.4) never chunks, a 100,000-item catalogue does.
LOGIT_CELLS = 2**25

REASON = "likely next, given the order of your latest items"


class SASRecNet(nn.Module):
    def __init__(self, *, n_items: int, hidden: int, blocks: int, heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = math.sqrt(hidden)
        self.items = nn.Embedding(n_items + 1, hidden, padding_idx=PADDING)  # token = code + 1
        self.positions = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        # The paper's block: attention, then a position-wise feed-forward of width `hidden`,
        # each with a residual and a layer norm before it; one last norm after the blocks.
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden, dropout=dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        # Xavier-normal embeddings, as the authors' code initialises them; padding stays zero.
        nn.init.xavier_normal_(self.items.weight)
        nn.init.xavier_normal_(self.positions.weight)
        with torch.no_grad():
            self.items.weight[PADDING].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(b, L) left-padded tokens -> (b, L, hidden) states; state t has read tokens 0..t only."""
        real = tokens != PADDING  # (b, L)
        steps = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        x = self.items(tokens) * self.scale + self.positions(steps)  # (b, L, hidden)
        x = self.dropout(x) * real.unsqueeze(-1)  # (b, L, hidden) empty slots carry nothing
        return self.norm(self.blocks(x, mask=attention_mask(real, self.heads)))  # (b, L, hidden)

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight[PADDING + 1 :]  # (n_items, hidden): row c is item code c


def attention_mask(real: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, L) True on real slots -> (b * heads, L, L) True where query t may not read key s:
    the future (s > t) and empty slots. Each slot may read itself, so an empty slot's row is
    never all blocked (no NaN); its state is never read."""
    L = real.shape[1]
    future = torch.triu(torch.ones(L, L, dtype=torch.bool, device=real.device), diagonal=1)  # (L, L)
    itself = torch.eye(L, dtype=torch.bool, device=real.device)  # (L, L)
    blocked = (future[None] | ~real[:, None, :]) & ~itself  # (b, L, L)
    return blocked.repeat_interleave(heads, dim=0)  # (b * heads, L, L), batch-major as attention takes it


def next_item_loss(states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean full-softmax cross-entropy: states (m, hidden), items (n_items, hidden), targets (m,) codes."""
    rows = max(1, LOGIT_CELLS // max(items.shape[0], 1))
    if len(states) <= rows:
        return F.cross_entropy(states @ items.T, targets)  # (m, n_items) logits
    total = sum(
        checkpoint(_loss_sum, states[s : s + rows], items, targets[s : s + rows], use_reentrant=False)
        for s in range(0, len(states), rows)
    )
    return total / len(states)


def _loss_sum(states: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(states @ items.T, targets, reduction="sum")  # (rows, n_items) logits


class SASRecModel:
    """FittedBaseline: a user's score for item j is the last state of their latest items . E[j]."""

    def __init__(self, matrix: InteractionMatrix, net: SASRecNet, sequences: ItemSequences, max_len: int,
                 threads: int | None) -> None:
        self.matrix = matrix
        self.net = net
        self.sequences = sequences
        self.max_len = max_len
        self.threads = threads  # scored on the thread count it was trained with: the same sums, the same lists

    def scores(self, users: np.ndarray) -> np.ndarray:
        tokens = torch.from_numpy(self.sequences.latest(np.asarray(users, dtype=np.int64), self.max_len))  # (n, L)
        self.net.eval()
        with torch.inference_mode(), torch_threads(self.threads):
            last = self.net(tokens)[:, -1]  # (n, hidden): the newest item is always in the last slot
            return (last @ self.net.item_vectors().T).numpy().astype(np.float32, copy=False)  # (n, n_items)

    def because(self, users: np.ndarray, codes: np.ndarray) -> np.ndarray:
        # Attention spreads over the whole sequence: no single history item is the reason.
        return np.full(codes.shape, -1, dtype=np.int64)  # (n, K)

    def reasons(self, items: np.ndarray, because: np.ndarray, titles: Mapping[str, str] | None) -> list[str]:
        return [REASON] * len(items)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads for the block (None: its own count, capped at the CPUs this
    process may use), restored after it."""
    before = torch.get_num_threads()
    n = threads or max(1, min(before, available_cpus()))
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


class _Progress:
    """One log line at least every PROGRESS_EVERY_S while training (and one at the end)."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        self.started = self.last = time.perf_counter()
        self.targets = 0

    def due(self) -> bool:
        return time.perf_counter() - self.last >= PROGRESS_EVERY_S

    def line(self, epoch: int, loss: float, best: tuple[float, int] | None, latest: float | None) -> None:
        self.last = time.perf_counter()
        rate = self.targets / max(self.last - self.started, 1e-9)
        valid = "" if best is None else (
            f", valid NDCG@10 {latest:.4f} (best {best[0]:.4f} at epoch {best[1]})" if latest is not None
            else f", best valid NDCG@10 {best[0]:.4f} at epoch {best[1]}")
        logger.info("sasrec: epoch %d of %d, %s targets/s, loss %.4f%s", epoch, self.max_epochs,
                    f"{rate:,.0f}", loss, valid)


def _train_epoch(net: SASRecNet, optimizer: torch.optim.Optimizer, sequences: ItemSequences, users: np.ndarray,
                 ends: np.ndarray, order: np.ndarray, *, max_len: int, batch_size: int,
                 report: Callable[[float], None], progress: _Progress) -> float:
    """One pass over the windows in `order`; the mean loss per target. `report(loss so far)`
    is called whenever a progress line is due."""
    net.train()
    loss_sum, loss_n = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        inputs, targets = sequences.window_batch(users[batch], ends[batch], max_len)  # (b, L) each
        targets = torch.from_numpy(targets)
        real = targets != PADDING  # (b, L)
        states = net(torch.from_numpy(inputs))[real]  # (m, hidden): the real positions only
        loss = next_item_loss(states, net.item_vectors(), targets[real] - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        m = int(real.sum())
        loss_sum, loss_n = loss_sum + loss.item() * m, loss_n + m
        progress.targets += m
        if progress.due():
            report(loss_sum / max(loss_n, 1))
    return loss_sum / max(loss_n, 1) if loss_n else float("nan")


def train_sasrec(
    matrix: InteractionMatrix,
    params: Mapping[str, Any],
    *,
    epochs: int,
    score: Callable[[FittedBaseline], float] | None = None,
) -> tuple[SASRecModel, EarlyStopping | None]:
    """Train up to `epochs` epochs. With `score` (validation NDCG@10 of the model), evaluate
    every eval_every epochs and on the last, stop after `patience` epochs without a gain and
    restore the best weights; without it, train exactly `epochs` epochs."""
    started = time.perf_counter()
    max_len, batch_size, seed = params["max_len"], params["batch_size"], params["seed"]
    # 1. Sequences and training windows (numpy: every batch is one gather)
    sequences = item_sequences(matrix)
    users, ends = sequences.windows(max_len)  # (n_windows,) each
    n_targets = int(np.maximum(sequences.lengths - 1, 0).sum())
    if len(users) == 0:
        logger.warning("sasrec: no user has two items, nothing to learn from; the model stays as initialised")
    # 2. A seeded network and optimizer (the global RNG, which dropout draws from, forked)
    with torch.random.fork_rng(devices=[]), torch_threads(params["threads"]) as threads:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = SASRecNet(n_items=matrix.n_items, hidden=params["hidden"], blocks=params["blocks"],
                        heads=params["heads"], dropout=params["dropout"], max_len=max_len)
        # The paper's Adam: beta2 = 0.98 (the transformer's).
        optimizer = torch.optim.Adam(net.parameters(), lr=params["lr"], betas=(0.9, 0.98))
        model = SASRecModel(matrix, net, sequences, max_len, params["threads"])
        logger.info("sasrec: %s windows, %s targets of %s users x %s items; %s %d epochs on %d threads",
                    f"{len(users):,}", f"{n_targets:,}", f"{matrix.n_users:,}", f"{matrix.n_items:,}",
                    "at most" if score else "exactly", epochs, threads)
        progress = _Progress(epochs)
        history: list[dict[str, Any]] = []
        best: tuple[float, int] | None = None  # (score, epoch)
        best_state = None
        epoch, loss_mean = 0, float("nan")

        # 3. Epochs: shuffled windows, full-softmax cross-entropy at every real position
        for epoch in range(1, epochs + 1):
            loss_mean = _train_epoch(net, optimizer, sequences, users, ends, rng.permutation(len(users)),
                                     max_len=max_len, batch_size=batch_size,
                                     report=lambda loss: progress.line(epoch, loss, best, None), progress=progress)

            # 4. Validation: keep the best weights, stop when patience runs out
            if score is None or (epoch % params["eval_every"] and epoch != epochs):
                if progress.due():
                    progress.line(epoch, loss_mean, best, None)
                continue
            value = float(score(model))
            history.append({"epoch": epoch, "loss": loss_mean, "ndcg@10": value})
            if best is None or value > best[0]:
                best, best_state = (value, epoch), copy.deepcopy(net.state_dict())
            if progress.due():
                progress.line(epoch, loss_mean, best, value)
            if epoch - best[1] >= params["patience"]:
                break

        net.eval()
        if score is None:
            logger.info("sasrec: trained %d epochs, loss %.4f (%.1f s)", epoch, loss_mean,
                        time.perf_counter() - started)
            return model, None
        net.load_state_dict(best_state)
        stopped_early = epoch < epochs
        logger.info("sasrec: %s after epoch %d: best valid NDCG@10 %.4f at epoch %d, its weights restored (%.1f s)",
                    "stopped" if stopped_early else "reached max_epochs", epoch, best[0], best[1],
                    time.perf_counter() - started)
        return model, EarlyStopping(best_epoch=best[1], best_score=best[0], epochs_run=epoch, max_epochs=epochs,
                                    patience=params["patience"], stopped_early=stopped_early,
                                    seconds=time.perf_counter() - started, history=history)
