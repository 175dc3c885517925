"""The two-tower matcher: user history -> user vector, item text (+ id) -> item vector.

Item tower: the frozen text-encoder vector of an item, projected to the shared space, plus
a learned id embedding for items that had training interactions (collaborative signal for
known items; a brand-new item still has its text). Output is L2-normalised. In training,
id dropout zeroes each item's id vector with probability `id_dropout` (per item, per
batch), so the text path alone must also place known items: what a new item gets.

User tower: the user's most recent items (newest first, as item-tower vectors) plus a
learned position embedding (order and recency matter), through a small transformer
encoder; the output at the newest position is the user vector, L2-normalised. With
`profile` on, the text-encoder vector of the user's profile text (the users table's
attributes), projected to the shared space, is one more token after the history: the
items attend to it. A user without a profile has that token masked.

Score = cosine(user, item) * exp(log_scale): a learned temperature.

Text encoder: frozen by default, the item tower reading the embedding stage's vectors.
With a `TextTop`, the encoder's top layers are part of the model and train with it: the
item tower then reads the vectors they pool from each item's token states below them
(chatrec.matcher.token_states), and their learning rate is the encoder's own, lower one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TextTop(nn.Module):
    """The text encoder's top layers: token states below them -> unit text vectors, pooled
    as the embedding stage pools (mean over real tokens, then L2). Loaded from the
    pretrained encoder, they reproduce its vectors exactly until they are trained."""

    def __init__(self, layers: nn.ModuleList, config) -> None:
        super().__init__()
        self.layers = layers
        self.config = config  # the encoder's: how its layers build their attention mask

    @classmethod
    def from_pretrained(cls, model_dir, top_layers: int) -> "TextTop":
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from chatrec.matcher.token_states import check_top_layers, encoder_layers

        hf_logging.disable_progress_bar()  # bars garble worker logs
        encoder = AutoModel.from_pretrained(model_dir)
        check_top_layers(encoder, top_layers)
        layers = encoder_layers(encoder)
        return cls(nn.ModuleList(list(layers)[len(layers) - top_layers :]), encoder.config)

    @classmethod
    def above(cls, token_states) -> "TextTop":
        """The pretrained layers above `token_states` (chatrec.matcher.token_states), from the
        encoder they were computed with, checked against its fingerprint on this node."""
        from chatrec.model_loading import resolve_checked

        return cls.from_pretrained(resolve_checked(token_states.model, token_states.fingerprint),
                                   token_states.top_layers)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (m, t, hidden), mask (m, t) 1 on real tokens -> (m, hidden) unit vectors."""
        from transformers.masking_utils import create_bidirectional_mask

        from chatrec.encoder import mean_pool

        attention = create_bidirectional_mask(config=self.config, inputs_embeds=states, attention_mask=mask)
        for layer in self.layers:
            out = layer(states, attention)
            states = out[0] if isinstance(out, tuple) else out  # (m, t, hidden); older layers return tuples
        return F.normalize(mean_pool(states, mask), dim=-1)  # (m, hidden)

    def encode(self, batch) -> torch.Tensor:
        """A TokenBatch (chatrec.matcher.token_states) of m items -> (m, hidden), bucket by bucket."""
        return batch.unbucket(torch.cat([self(states, mask) for states, mask in batch.buckets]))  # (m, hidden)


class TwoTower(nn.Module):
    def __init__(
        self,
        *,
        n_items: int,
        text_dim: int,
        dim: int,
        max_history: int,
        heads: int,
        layers: int,
        dropout: float,
        temperature: float,
        id_dropout: float = 0.0,
        profile: bool = False,
        text_top: TextTop | None = None,
    ) -> None:
        super().__init__()
        self.n_items, self.text_dim, self.dim, self.max_history = n_items, text_dim, dim, max_history
        self.id_dropout = id_dropout
        self.text_projection = nn.Linear(text_dim, dim)
        self.item_ids = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_ids.weight, std=0.02)
        # Items without training interactions keep a zero id vector: text alone places them.
        self.register_buffer("has_id", torch.zeros(n_items, dtype=torch.bool))
        self.positions = nn.Embedding(max_history, dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.sequence = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.profile_projection = nn.Linear(text_dim, dim) if profile else None
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.text_top = text_top  # None: the text encoder is frozen

    def text_vectors(self, item_text) -> torch.Tensor:
        """item_text: (m, text_dim) text vectors, or with a text top the m items' token
        states (a TokenBatch) -> (m, text_dim)."""
        return item_text if self.text_top is None else self.text_top.encode(item_text)

    def items(self, text: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """text (m, text_dim) of the items at `rows` (m,) -> unit item vectors (m, dim)."""
        keep = self.has_id[rows]  # (m,) bool
        if self.training and self.id_dropout > 0:
            keep = keep & (torch.rand(rows.shape, device=rows.device) >= self.id_dropout)  # (m,)
        ids = self.item_ids(rows) * keep.unsqueeze(-1)  # (m, dim)
        return F.normalize(self.text_projection(text) + ids, dim=-1)  # (m, dim)

    def text_only(self, text: torch.Tensor) -> torch.Tensor:
        """text (m, text_dim) -> unit item vectors (m, dim) without id vectors: how the tower
        places an item with no training interactions."""
        return F.normalize(self.text_projection(text), dim=-1)  # (m, dim)

    def users(self, history: torch.Tensor, padded: torch.Tensor, profile: torch.Tensor | None = None) -> torch.Tensor:
        """Newest-first histories of item vectors -> unit user vectors.

        history (b, L, dim) item-tower vectors, padded (b, L) True where there is no item;
        every history has at least one item. profile (b, text_dim) profile text vectors, a
        zero row for a user without one; read only when the model has a profile token.
        """
        steps = torch.arange(history.shape[1], device=history.device)  # (L,)
        x = history + self.positions(steps)  # (b, L, dim)
        if self.profile_projection is not None and profile is not None:
            token = self.profile_projection(profile)  # (b, dim)
            x = torch.cat([x, token[:, None]], dim=1)  # (b, L + 1, dim)
            missing = (profile == 0).all(dim=-1)  # (b,) no profile text
            padded = torch.cat([padded, missing[:, None]], dim=1)  # (b, L + 1)
        h = self.sequence(self.dropout(x), src_key_padding_mask=padded)  # (b, L[+1], dim)
        return F.normalize(h[:, 0], dim=-1)  # (b, dim): read at the newest item

    def forward(
        self, item_text, item_rows: torch.Tensor,
        history: torch.Tensor, targets: torch.Tensor,
        profile: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """In-batch logits: every user in the batch against every target in the batch.

        The batch's distinct items go through the item tower once: item_text (m, text_dim)
        (or a text top's input, see `text_vectors`) and item_rows (m,); history (b, L) and targets (b,) index into those m items
        (history -1 where padded); profile (b, text_dim) or None. Returns (b, b).
        """
        vectors = self.items(self.text_vectors(item_text), item_rows)  # (m, dim)
        padded = history < 0  # (b, L)
        users = self.users(vectors[history.clamp(min=0)], padded, profile)  # (b, dim)
        return users @ vectors[targets].T * self.scale()  # (b, b)

    def scale(self) -> torch.Tensor:
        # Bounded so a runaway temperature cannot blow up the logits.
        return self.log_scale.clamp(max=math.log(100.0)).exp()
