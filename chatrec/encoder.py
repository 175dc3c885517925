"""Transformer text encoder: texts -> L2-normalised mean-pooled embeddings.

`TextEncoder` is a Ray Data callable class: the model loads once per actor in `__init__`,
`__call__` encodes one block. Within a block, texts are sorted by token length and cut into
mini-batches so each batch pads to its own longest text, then the original order is restored.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from chatrec.errors import ModelLoadError
from chatrec.model_loading import resolve_checked, resolve_model_dir
from chatrec.progress import PROGRESS_EVERY_S
from chatrec.schemas import embedding_type

logger = logging.getLogger(__name__)

# How token vectors become a text vector; part of what a cached item vector depends on.
POOLING = "mean+l2"


def count_truncated(model: str, texts: list[str], max_length: int) -> int:
    """How many texts exceed `max_length` tokens (and so are cut by the encoder)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(model))
    lengths = tokenizer(texts, add_special_tokens=True, return_length=True)["length"]
    return int(sum(n > max_length for n in lengths))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real (unpadded) tokens."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
    summed = (hidden * mask).sum(dim=1)  # (batch, dim)
    counts = mask.sum(dim=1).clamp(min=1e-9)  # (batch, 1)
    return summed / counts  # (batch, dim)


def to_fixed_size_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, dim) float32 -> Arrow fixed_size_list<float32>[dim] without copying rows one by one."""
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, dim).cast(embedding_type(dim))


def fixed_size_list_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow fixed_size_list<float32>[dim] -> (n, dim) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def import_model_code(model_dir) -> None:
    """Import the transformers module of the model in `model_dir` now (about 2 s for BERT in
    a fresh process), so that a later TextEncoder in this process starts at once. Called
    from a thread while Ray starts; best effort: a failure here surfaces later, where it
    has its proper message."""
    try:
        from transformers import AutoConfig, AutoModel

        AutoModel._model_mapping[type(AutoConfig.from_pretrained(model_dir))]
    except Exception:  # noqa: BLE001 - only a warm-up
        logger.debug("warm-up import of the encoder failed", exc_info=True)


class TextEncoder:
    """Encode the `text` column of each block into an `embedding` column.

    Keyword arguments (passed as Ray Data `fn_constructor_kwargs`):
      model: model spec (see chatrec.model_loading); resolved on each actor's node.
      fingerprint: expected model fingerprint; a node with different weights is an error.
      max_length: tokens per text; longer texts are cut on a token boundary.
      batch_size: texts per forward pass.
      device: "cpu" or "cuda".
      precision: "fp32", "fp16" or "bf16".
      num_threads: torch intra-op threads (CPU actors): the CPUs this actor reserved.
      keep_columns: input columns copied to the output; constants: extra string columns.
      output_schema: if given, the output is selected and cast to it (the published schema).
    """

    def __init__(
        self,
        *,
        model: str,
        fingerprint: str | None,
        max_length: int,
        batch_size: int,
        device: Literal["cpu", "cuda"] = "cpu",
        precision: Literal["fp32", "fp16", "bf16"] = "fp32",
        num_threads: int | None = None,
        keep_columns: tuple[str, ...] = (),
        constants: dict[str, str] | None = None,
        output_schema: pa.Schema | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # bars garble worker logs
        if num_threads:
            torch.set_num_threads(num_threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("GPU encoding was requested but torch sees no CUDA device on this node")
        model_dir = resolve_checked(model, fingerprint)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.model = AutoModel.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.keep_columns = keep_columns
        self.constants = dict(constants or {})
        self.output_schema = output_schema
        self.dim = int(self.model.config.hidden_size)
        self._done = 0
        self._started = time.monotonic()
        self._last_log = self._started

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, cut on a token boundary past max_length."""
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def forward_batches(self, ids: list[list[int]], **model_kwargs):
        """The model over `ids` in batches of similar length (little padding): yields each
        batch's rows in `ids`, the model's output and the attention mask (batch, tokens).
        Callers run it under torch.inference_mode()."""
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            padded = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
            input_ids = padded["input_ids"].to(self.device)  # (batch, tokens)
            mask = padded["attention_mask"].to(self.device)  # (batch, tokens)
            yield chunk, self.model(input_ids=input_ids, attention_mask=mask, **model_kwargs), mask

    def encode(self, texts: list[str]) -> np.ndarray:
        """texts -> (n, dim) float32 unit vectors; texts past max_length are cut on a token boundary."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = np.empty((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for chunk, output, mask in self.forward_batches(self.token_ids(texts)):
                pooled = mean_pool(output.last_hidden_state.float(), mask)  # (batch, dim)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)  # (batch, dim), unit length
                out[chunk] = pooled.cpu().numpy()
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        vectors = self.encode(texts)
        columns = {name: batch.column(name) for name in self.keep_columns}
        columns["embedding"] = to_fixed_size_list(vectors)
        for name, value in self.constants.items():
            columns[name] = pa.array([value] * batch.num_rows, pa.string())
        self._report(batch.num_rows)
        table = pa.table(columns)
        if self.output_schema is not None:
            table = table.select(self.output_schema.names).cast(self.output_schema)
        return table

    def _report(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            rate = self._done / max(now - self._started, 1e-9)
            logger.info("encoder actor: %d texts encoded (%.0f texts/s)", self._done, rate)
            self._last_log = now
