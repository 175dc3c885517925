"""SASRec (Kang & McAuley 2018, "Self-Attentive Sequential Recommendation"): the next-item
transformer over item ids, the sequential peer of the matrix baselines.

A user's sequence is their distinct items oldest first, in the order the InteractionMatrix
gives them (a repeated item counts once, at its newest time; equal timestamps ordered by
item_id, as everywhere in chatrec). The network reads the last `max_len` of them:

    x_t = E[item_t] * sqrt(d) + P[t]                item and learned position embeddings
    h   = LN(blocks(dropout(x)))                    pre-LN causal self-attention blocks
    score(u, j) = h_last(u) . E[j]                  the item embeddings are shared with the output

Training is next-item prediction at every position with a full softmax over all items
(cross-entropy, no sampled negatives: Klenitskiy & Vasilev 2023 and Petrov & Macdonald 2023
found it far ahead of the paper's binary loss with one negative). Each user's history is cut
into windows of max_len + 1 items from the newest back, so every item after a user's first
is a training target exactly once (the paper keeps only the newest window; on short logs
the older windows are most of the data). Adam, a seeded run: the same seed and thread count
give the same model.

Validation chooses the epoch count (chatrec.baselines.tuning): trained on train, scored on
valid (NDCG@10, the tuning metric of every baseline) every `eval_every` epochs, stopped once
`patience` epochs bring no gain, best weights restored. The job then refits on train +
valid for that many epochs, as the other baselines refit with their tuned parameters, so
the published model has seen every known interaction. `--param epochs=N` fixes the count
instead (no validation needed). The torch part lives in sasrec_net, imported only when a
SASRec is fitted: the matrix baselines run without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatrec.baselines.base import EarlyStopping, EpochTrainedBaseline, FittedBaseline, Param
from chatrec.baselines.interaction_matrix import InteractionMatrix
from chatrec.errors import ConfigError

PADDING = 0  # token of an empty slot; item code c is token c + 1


@dataclass(frozen=True)
class ItemSequences:
    """Every user's distinct items, oldest first, stored CSR-style (one gather per batch)."""

    offsets: np.ndarray  # (n_users + 1,) int64: user u's items are items[offsets[u]:offsets[u + 1]]
    items: np.ndarray  # (nnz,) int64 item codes, oldest first within a user

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n_users,)

    def latest(self, users: np.ndarray, max_len: int) -> np.ndarray:
        """(b,) user codes -> (b, max_len) tokens of their last max_len items, left-padded:
        the newest item is always in the last slot."""
        idx = self.lengths[users][:, None] - max_len + np.arange(max_len)[None, :]  # (b, L) index in the sequence
        return self._tokens(users, idx, idx >= 0)

    def windows(self, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Training windows as (user, end) pairs: each window predicts the items at sequence
        indices [end - max_len, end) from the item before each. Ends step back from the
        sequence's length by max_len while a target with an item before it remains, so
        every item but a user's first is a target once."""
        counts = np.where(self.lengths >= 2, -(-(self.lengths - 1) // max_len), 0)  # (n_users,) ceil((n - 1) / L)
        users = np.repeat(np.arange(len(counts)), counts)  # (n_windows,)
        back = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)  # (n_windows,) 0 = newest
        return users, self.lengths[users] - back * max_len

    def window_batch(self, users: np.ndarray, ends: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(b,) windows -> inputs, targets: (b, max_len) tokens each, left-padded alike;
        targets[:, s] is the item after inputs[:, s]."""
        target_idx = ends[:, None] - max_len + np.arange(max_len)[None, :]  # (b, L)
        real = target_idx >= 1  # (b, L) the target has an item before it
        return self._tokens(users, target_idx - 1, real), self._tokens(users, target_idx, real)

    def _tokens(self, users: np.ndarray, idx: np.ndarray, real: np.ndarray) -> np.ndarray:
        flat = self.offsets[users][:, None] + idx  # (b, L)
        items = self.items[np.clip(flat, 0, max(len(self.items) - 1, 0))] if len(self.items) else flat
        return np.where(real, items + 1, PADDING).astype(np.int64)  # (b, L)


def item_sequences(matrix: InteractionMatrix) -> ItemSequences:
    """The matrix's histories as sequences: position 0 (newest) goes last."""
    X = matrix.X
    lengths = np.diff(X.indptr)  # (n_users,)
    rows = np.repeat(np.arange(matrix.n_users), lengths)  # (nnz,) the user of each entry
    slot = X.indptr[rows] + lengths[rows] - 1 - matrix.positions  # (nnz,) oldest first
    items = np.empty(X.nnz, dtype=np.int64)
    items[slot] = X.indices
    return ItemSequences(np.asarray(X.indptr, dtype=np.int64), items)


class SASRec(EpochTrainedBaseline):
    name = "sasrec"
    params = {
        "hidden": Param(int, 1),
        "blocks": Param(int, 1),
        "heads": Param(int, 1),
        "dropout": Param(float, 0.0),
        "lr": Param(float, 0.0, low_open=True),
        "batch_size": Param(int, 1),
        "max_len": Param(int, 1),
        "max_epochs": Param(int, 1),
        "patience": Param(int, 1),
        "eval_every": Param(int, 1),
        "epochs": Param(int, 1, none_means="valid"),
        "seed": Param(int, 0),
        "threads": Param(int, 1, none_means="auto"),
    }
    defaults = {
        # The paper's network: 64 dimensions, 2 blocks, 1 head (more heads did not help it).
        "hidden": 64,
        "blocks": 2,
        "heads": 1,
        # The paper's 0.2 for dense logs (MovieLens); its sparse Amazon logs took 0.5.
        "dropout": 0.2,
        "lr": 1e-3,
        # Windows per step: 128 x 50 positions is a 6,400-row softmax per step.
        "batch_size": 128,
        # Last 50 items: the paper's length for logs of short sequences; MovieLens-100K
        # users have a median of ~50 training items, so most keep their whole history.
        "max_len": 50,
        # An upper bound validation should never reach: MovieLens-100K (80k training targets,
        # 16 steps an epoch, ~3.5 s on one core) peaks near epoch 20. Patience 20 rides out
        # the epoch-to-epoch noise of NDCG@10 on ~900 validation users (+-0.005); scoring them
        # costs a fraction of an epoch, so every epoch is scored.
        "max_epochs": 200,
        "patience": 20,
        "eval_every": 1,
        "epochs": None,  # None: chosen on validation (early stopping)
        "seed": 0,
        # None: torch's own count, capped at the CPUs this process may use (2 threads are 1.5x
        # one on an idle 2-core machine). On a machine another job keeps busy, threads=1: the
        # intra-op threads wait for each other at every op, and 2 ran 5-10x slower than 1.
        "threads": None,
    }

    def resolve_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        resolved = super().resolve_params(params)
        if resolved["dropout"] >= 1.0:
            raise ConfigError(f"baseline 'sasrec' parameter 'dropout' must be < 1, got {resolved['dropout']!r}")
        if resolved["hidden"] % resolved["heads"]:
            raise ConfigError(
                f"baseline 'sasrec' parameter 'hidden' must be a multiple of 'heads' (each head gets hidden / heads "
                f"dimensions), got hidden={resolved['hidden']!r}, heads={resolved['heads']!r}"
            )
        return resolved

    def fit(self, matrix: InteractionMatrix, params: Mapping[str, Any]) -> FittedBaseline:
        if params["epochs"] is None:
            raise ConfigError(
                "baseline 'sasrec' chooses its epoch count on a validation log: pass --valid, "
                "or fix it with --param epochs=N"
            )
        from chatrec.baselines.sasrec_net import train_sasrec

        model, _ = train_sasrec(matrix, params, epochs=params["epochs"])
        return model

    def fit_early_stopped(
        self, matrix: InteractionMatrix, params: Mapping[str, Any], score: Callable[[FittedBaseline], float]
    ) -> tuple[FittedBaseline, EarlyStopping]:
        from chatrec.baselines.sasrec_net import train_sasrec

        return train_sasrec(matrix, params, epochs=params["max_epochs"], score=score)
