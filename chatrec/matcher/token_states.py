"""The text encoder's token states below its top layers: the input of a finetuned text top.

With `matcher.text_encoder: finetune`, the encoder's top layers train with the matcher
(chatrec.matcher.model.TextTop). Everything below them stays frozen, so each item's token
states at that depth are computed once, here, and every training step runs only the top
layers over them. Only real tokens are kept (no padding), as float16: an item costs
tokens x hidden x 2 bytes (about 15 KB for a 20-token title at MiniLM's 384).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from chatrec.errors import ConfigError
from chatrec.encoder import TextEncoder

logger = logging.getLogger(__name__)

# Token states of the whole catalogue travel to every training worker through the object
# store; beyond this the option would crowd out the workers' memory.
MAX_STATE_BYTES = 8 << 30


@dataclass(frozen=True)
class TokenStates:
    model: str  # the encoder spec they were computed with (each worker loads its top layers)
    fingerprint: str | None
    top_layers: int  # how many of the encoder's layers sit above these states
    states: np.ndarray  # (total_tokens, hidden) float16: every item's real tokens, item after item
    offsets: np.ndarray  # (n_items + 1,) int64: item r's tokens are states[offsets[r]:offsets[r + 1]]

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    def batch(self, rows: torch.Tensor, device: torch.device | str = "cpu") -> "TokenBatch":
        """rows (m,) item rows -> their token states, padded in buckets of similar length."""
        rows = rows.cpu().numpy()
        lengths = self.offsets[rows + 1] - self.offsets[rows]  # (m,)
        order = np.argsort(lengths, kind="stable")  # (m,) shortest first
        buckets = [self._padded(rows[order[i : i + BUCKET_ITEMS]], device) for i in range(0, len(rows), BUCKET_ITEMS)]
        restore = torch.from_numpy(np.argsort(order, kind="stable")).to(device)  # (m,) bucket order -> rows order
        return TokenBatch(buckets, restore)

    def _padded(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor]:
        """rows (m,) -> token states (m, t, hidden) float32, zero-padded to the longest of
        them, and the attention mask (m, t) int64."""
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]  # (m,), (m,)
        steps = np.arange(lengths.max() if len(rows) else 0)  # (t,)
        present = steps[None, :] < lengths[:, None]  # (m, t)
        index = np.where(present, starts[:, None] + steps[None, :], 0)  # (m, t)
        states = torch.from_numpy(self.states[index])  # (m, t, hidden) float16, gathered: a fresh array
        mask = torch.from_numpy(present).to(device)  # (m, t)
        states = states.to(device=device, dtype=torch.float32) * mask[..., None]  # (m, t, hidden), padding 0
        return states, mask.to(dtype=torch.int64)


# Items per padded bucket: each pads only to the longest in it, and sorted by length that is
# close to each one's own. On MovieLens-100K's titles (16 tokens on average) a step over
# every item took 2.4 s in buckets of 128 against 5.9 s padded as one (2 CPU cores).
BUCKET_ITEMS = 128


@dataclass(frozen=True)
class TokenBatch:
    """Some items' token states, in buckets of similar length: the text top's input."""

    buckets: list[tuple[torch.Tensor, torch.Tensor]]  # (states (m_b, t_b, hidden), mask (m_b, t_b)) each
    restore: torch.Tensor  # (m,): where each requested row sits in the buckets' concatenation

    def unbucket(self, vectors: torch.Tensor) -> torch.Tensor:
        """(m, d) vectors in bucket order -> (m, d) in the order the rows were asked for."""
        return vectors[self.restore]


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer layers of a BERT-family encoder (BERT, RoBERTa, MiniLM, MPNet, ...)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(
            f"matcher.text_encoder: finetune needs an encoder whose layers are `encoder.layer` (the BERT family); "
            f"{type(model).__name__} is not one: use text_encoder: frozen"
        )
    return layers


def check_top_layers(model: torch.nn.Module, top_layers: int) -> None:
    total = len(encoder_layers(model))
    if top_layers > total:
        raise ConfigError(f"matcher.finetune_layers ({top_layers}) is more than the encoder's {total} layers")


def encode_token_states(
    *, model: str, fingerprint: str | None, texts: list[str], max_length: int, top_layers: int,
    batch_size: int = 64, device: str = "cpu", num_threads: int | None = None,
) -> TokenStates:
    """Each text's token states below the encoder's top `top_layers` layers, through the
    embedding stage's own encoder (same truncation and batching), so the top layers
    reproduce its vectors."""
    encoder = TextEncoder(model=model, fingerprint=fingerprint, max_length=max_length, batch_size=batch_size,
                          device=device, num_threads=num_threads)
    check_top_layers(encoder.model, top_layers)
    ids = encoder.token_ids(texts)
    lengths = np.array([len(x) for x in ids], np.int64)  # (n,)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (n + 1,)
    hidden = encoder.dim
    if offsets[-1] * hidden * 2 > MAX_STATE_BYTES:
        raise ConfigError(
            f"matcher.text_encoder: finetune would keep {offsets[-1]:,} token states of {hidden} values "
            f"({offsets[-1] * hidden * 2 / 2**30:.1f} GiB, above {MAX_STATE_BYTES >> 30} GiB): lower "
            "encoder.max_length, or use text_encoder: frozen for a catalogue this size"
        )
    states = np.empty((int(offsets[-1]), hidden), np.float16)  # (total_tokens, hidden)
    with torch.inference_mode():
        for chunk, out, _ in encoder.forward_batches(ids, output_hidden_states=True):
            # hidden_states[0] is the embeddings' output, [i] layer i's: the top layers' input
            # is the output of the layer below them.
            below = out.hidden_states[-(top_layers + 1)].float().cpu().numpy()  # (batch, tokens, hidden)
            for j, i in enumerate(chunk):
                states[offsets[i] : offsets[i + 1]] = below[j, : lengths[i]]
    logger.info("matcher: token states of %d texts below the top %d layer(s): %.1f MB",
                len(texts), top_layers, states.nbytes / 1e6)
    return TokenStates(model, fingerprint, top_layers, states, offsets)
