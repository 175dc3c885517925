"""User vectors from histories. The contract a user tower fulfils:

    histories batch (schemas.HISTORIES) -> the same rows plus `embedding` (unit length)

`RecencyMeanUserEncoder` is the zero-shot tower: a recency-weighted mean of the user's
history item vectors. A learned tower (the finetuned matcher) is another callable class
with the same constructor keywords and the same input/output tables, so the user stage
runs either unchanged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from chatrec import schemas
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import to_fixed_size_list


def recency_weights(lengths: np.ndarray, half_life: float) -> np.ndarray:
    """Flattened weights for histories of the given lengths, newest item first.

    The i-th most recent item weighs 0.5 ** (i / half_life): with half_life 10, the 10th
    most recent item counts half as much as the newest.
    """
    total = int(lengths.sum())
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # (total,)
    position = np.arange(total) - starts  # (total,), 0 = newest
    return np.power(0.5, position / half_life).astype(np.float32)


def recency_weighted_mean(
    vectors: np.ndarray, recent_rows: pa.ListArray, half_life: float
) -> np.ndarray:
    """(n_items, dim) item vectors, n users' recent rows -> (n, dim) unit user vectors."""
    lengths = np.diff(recent_rows.offsets.to_numpy())  # (n,)
    flat = recent_rows.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # (total,)
    weights = recency_weights(lengths, half_life)  # (total,)
    weighted = vectors[flat] * weights[:, None]  # (total, dim)
    out = np.zeros((len(lengths), vectors.shape[1]), np.float32)  # (n, dim)
    nonempty = lengths > 0
    if nonempty.any():
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        out[nonempty] = np.add.reduceat(weighted, starts, axis=0)  # (n_nonempty, dim)
    norms = np.linalg.norm(out, axis=1, keepdims=True)  # (n, 1)
    return out / np.maximum(norms, 1e-12)


class RecencyMeanUserEncoder:
    """Ray Data callable: histories -> user vectors (recency-weighted mean of item vectors).

    With `profile_weight` > 0 and `text_encoder` kwargs, users with a profile text get
    normalise((1 - w) * history_vector + w * encode(profile_text)); the encoder loads once
    per actor, as in the item stage.
    """

    def __init__(
        self,
        *,
        catalogue: ItemCatalogue | ray.ObjectRef,
        half_life: float,
        profile_weight: float = 0.0,
        text_encoder: dict | None = None,
    ) -> None:
        self.catalogue: ItemCatalogue = ray.get(catalogue) if isinstance(catalogue, ray.ObjectRef) else catalogue
        self.half_life = half_life
        self.profile_weight = profile_weight
        self.text_encoder = None
        if profile_weight > 0 and text_encoder is not None:
            from chatrec.encoder import TextEncoder

            self.text_encoder = TextEncoder(**text_encoder)

    def __call__(self, batch: pa.Table) -> pa.Table:
        recent = batch.column("recent_rows").combine_chunks()
        vectors = recency_weighted_mean(self.catalogue.vectors, recent, self.half_life)  # (n, dim)
        if self.text_encoder is not None:
            vectors = self._blend_profiles(vectors, batch.column("profile_text").to_pylist())
        out = batch.select(schemas.HISTORIES.names).append_column("embedding", to_fixed_size_list(vectors))
        return out.cast(schemas.user_vectors(self.catalogue.dim))

    def _blend_profiles(self, vectors: np.ndarray, profiles: list[str | None]) -> np.ndarray:
        has = [i for i, p in enumerate(profiles) if p]
        if not has:
            return vectors
        encoded = self.text_encoder.encode([profiles[i] for i in has])  # (m, dim)
        w = self.profile_weight
        blended = (1 - w) * vectors[has] + w * encoded  # (m, dim)
        vectors = vectors.copy()
        vectors[has] = blended / np.maximum(np.linalg.norm(blended, axis=1, keepdims=True), 1e-12)
        return vectors
