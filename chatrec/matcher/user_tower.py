"""The matcher's user tower as the user stage's Ray Data callable.

Same contract as chatrec.user_vectors.RecencyMeanUserEncoder: histories (schemas.HISTORIES)
in, the same rows plus `embedding` out. The catalogue's vectors are the item tower's, and
the model loads once per actor from the state dict in the object store; so do the profile
vectors (chatrec.matcher.profiles) of a tower with a profile token, looked up by each
history's `profile_text`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray
import torch

from chatrec import schemas
from chatrec.catalogue import ItemCatalogue
from chatrec.encoder import to_fixed_size_list
from chatrec.matcher.training import build_model, read_only_tensor, user_vectors


def padded_histories(recent_rows: pa.ListArray, max_len: int) -> np.ndarray:
    """Newest-first list column -> (n, max_len) int64 rows, -1 padded, longer lists cut."""
    offsets = recent_rows.offsets.to_numpy().astype(np.int64)  # (n + 1,)
    flat = recent_rows.flatten().to_numpy(zero_copy_only=False).astype(np.int64)  # (total,)
    lengths = np.diff(offsets)  # (n,)
    steps = np.arange(max_len)  # (L,)
    index = offsets[:-1, None] + steps[None, :]  # (n, L)
    present = steps[None, :] < lengths[:, None]  # (n, L)
    return np.where(present, flat[np.clip(index, 0, max(len(flat) - 1, 0))] if len(flat) else -1, -1)


class MatcherUserEncoder:
    def __init__(
        self,
        *,
        catalogue: ItemCatalogue | ray.ObjectRef,
        matcher: dict | ray.ObjectRef,
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.catalogue: ItemCatalogue = ray.get(catalogue) if isinstance(catalogue, ray.ObjectRef) else catalogue
        spec = ray.get(matcher) if isinstance(matcher, ray.ObjectRef) else matcher
        self.model = build_model(n_items=spec["n_items"], text_dim=spec["text_dim"], params=spec["params"])
        self.model.load_state_dict(spec["state_dict"])
        self.model.eval()
        self.max_history = spec["params"]["max_history"]
        self.items = read_only_tensor(self.catalogue.vectors)  # (n_items, dim) item-tower vectors
        self.profiles = spec.get("profiles")  # UserProfiles, or None: no profile token

    def __call__(self, batch: pa.Table) -> pa.Table:
        recent = batch.column("recent_rows").combine_chunks()
        histories = padded_histories(recent, self.max_history)  # (n, L)
        profiles = (self.profiles.of_texts(batch.column("profile_text").to_pylist())
                    if self.profiles is not None else None)  # (n, text_dim)
        vectors = user_vectors(self.model, self.items, histories, profiles).numpy()  # (n, dim)
        out = batch.select(schemas.HISTORIES.names).append_column("embedding", to_fixed_size_list(vectors))
        return out.cast(schemas.user_vectors(self.catalogue.dim))
