"""Language-model engines for the rerank stage: prompts in, answers and token counts out.

Both engines take the same input rows, `user_id` and `prompt_ids` (the prompt already
rendered, chat-templated and tokenized on the driver, so the token budget counts exactly
what the model reads), and give `user_id`, `answer`, `tokens_in`, `tokens_out`, `error`.

- `HFGenerator` (engine `hf`): transformers `generate` with greedy decoding in Ray Data
  actors, on CPU or one GPU per actor. Deterministic: the same prompts in the same batches
  give the same answers. No constrained decoding: the answer is whatever the model writes,
  and the parser (chatrec.rerank.parsing) copes. Reads GGUF files too (the packaged
  `smollm2-135m-instruct`, the demo's model), dequantised on load.
- `build_vllm_processor` (engine `vllm`): Ray Data's LLM batch processor
  (`ray.data.llm.build_processor` with `vLLMEngineProcessorConfig`) with one vLLM engine
  per GPU, greedy sampling and structured output (the answer's JSON schema), for GPU
  clusters. vllm is not a dependency of chatrec: install it on the GPU nodes. This path is
  written against Ray 2.60's `ray.data.llm` API and its construction is unit-tested, but it
  has not been run on a GPU here. GGUF models are refused (VLLM_GGUF); `auto` picks hf for them.

`TokenizerView` is the driver's side: the final prompt text, its token ids, and the model's
context length.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import torch

from chatrec.config import RerankConfig
from chatrec.encoder import PROGRESS_EVERY_S
from chatrec.errors import ConfigError, ModelLoadError
from chatrec.model_loading import PACKAGED_LMS, is_gguf, lm_fingerprint, resolve_causal_lm, resolve_lm_checked
from chatrec.runtime import ActorPlan, ClusterResources

logger = logging.getLogger(__name__)

Engine = Literal["hf", "vllm"]

ANSWERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("tokens_in", pa.int32(), nullable=False),
        pa.field("tokens_out", pa.int32(), nullable=False),
        pa.field("error", pa.string()),  # the engine's message when it failed on this prompt
    ]
)

# Context sizes a config may name; the first one present wins.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


# vLLM's GGUF loading is experimental and needs the original model's tokenizer besides the file;
# the hf engine reads the file whole (tokenizer, chat template, weights).
VLLM_GGUF = ("rerank.model {model!r} is a GGUF file, which the vllm engine does not load here; "
             "set rerank.engine to 'hf' (or 'auto'), or give vllm a Hugging Face model id or directory")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_engine(cfg: RerankConfig, res: ClusterResources) -> Engine:
    """`rerank.engine` resolved against the cluster; a request that cannot be met is an error."""
    if cfg.engine == "vllm":
        if res.gpus == 0:
            raise ConfigError("rerank.engine is 'vllm' but the Ray cluster has no GPUs; use 'hf' or 'auto'")
        if not vllm_installed():
            raise ConfigError("rerank.engine is 'vllm' but vllm is not installed; `pip install vllm` on every node")
        if cfg.model is not None and is_gguf(cfg.model):
            raise ConfigError(VLLM_GGUF.format(model=cfg.model))
        return "vllm"
    if cfg.engine == "hf" or res.gpus == 0 or cfg.device == "cpu":
        return "hf"
    if vllm_installed():
        if cfg.model is not None and is_gguf(cfg.model):
            logger.info("rerank.model %r is a GGUF file: reranking with transformers generate on GPU actors, "
                        "not vllm", cfg.model)
            return "hf"
        return "vllm"
    logger.warning("the cluster has GPUs but vllm is not installed: reranking with transformers generate on GPU actors")
    return "hf"


def batch_size(cfg: RerankConfig, engine: Engine, plan: ActorPlan | None) -> int:
    """Prompts per generate call (hf) or per batch sent to an engine (vllm)."""
    if cfg.batch_size != "auto":
        return cfg.batch_size
    if engine == "vllm":
        return 64  # vLLM schedules its own batches; 64 rows keep its queue fed
    # On CPU, 8 prompts of ~2k tokens per call: padding waste stays small (prompts arrive
    # sorted by length) and one batch's KV cache a few hundred MB for a 0.5B model.
    return 32 if plan is not None and plan.device == "cuda" else 8


def model_location(spec: str) -> str:
    """A local directory or .gguf file as an absolute path (Ray workers do not share the
    driver's working directory); hub ids, packaged names and URIs unchanged."""
    local = Path(spec).expanduser()
    if "://" in spec or spec in PACKAGED_LMS or not (local.is_dir() or is_gguf(spec)):
        return spec
    return str(local.resolve())


def model_identity(spec: str) -> str | None:
    """The weights' fingerprint for a local directory, URI or GGUF file; None for a hub id
    (its revision is whatever the hub or the cache holds)."""
    if _hub_id(spec):
        return None
    return lm_fingerprint(resolve_causal_lm(spec))


def _hub_id(spec: str) -> bool:
    return not ("://" in spec or is_gguf(spec) or Path(spec).expanduser().is_dir())


class TokenizerView:
    """The model's tokenizer on the driver: the final prompt text and its tokens."""

    def __init__(self, spec: str) -> None:
        from transformers import AutoConfig, AutoTokenizer

        files = None if _hub_id(spec) else resolve_causal_lm(spec)
        source, kwargs = (spec, {}) if files is None else (str(files.directory), files.load_kwargs())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            config = AutoConfig.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load the rerank model's tokenizer from {spec!r}: {e}") from e
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.context_length = next(
            (int(getattr(config, k)) for k in _CONTEXT_KEYS if isinstance(getattr(config, k, None), int)), None
        )

    def encode(self, user_message: str) -> list[int]:
        """Token ids of the prompt the model reads: the chat template applied when the model
        has one (it adds the special tokens itself), else the text with the tokenizer's own."""
        if self.chat:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(user_message)["input_ids"]


class HFGenerator:
    """Ray Data callable: `user_id`, `prompt_ids` -> ANSWERS, greedy decoding.

    Keyword arguments (Ray Data `fn_constructor_kwargs`):
      model: model spec (see chatrec.model_loading), resolved on each actor's node.
      fingerprint: the driver's fingerprint of the weights; a node with others is an error.
      max_new_tokens: the most tokens generated per prompt.
      device: "cpu" or "cuda"; precision: "fp32", "fp16" or "bf16".
      num_threads: torch intra-op threads (CPU actors).
    """

    def __init__(
        self,
        *,
        model: str,
        fingerprint: str | None,
        max_new_tokens: int,
        device: Literal["cpu", "cuda"] = "cpu",
        precision: Literal["fp32", "fp16", "bf16"] = "fp32",
        num_threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # bars garble worker logs
        _quiet_gguf_progress_bar()
        if num_threads:
            torch.set_num_threads(num_threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("GPU reranking was requested but torch sees no CUDA device on this node")
        files = resolve_lm_checked(model, fingerprint, role="rerank model")
        tokenizer = AutoTokenizer.from_pretrained(files.directory, **files.load_kwargs())
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        # A GGUF file is dequantised to `dtype` here, once per actor (about 20 s for SmolLM2-135M
        # on 2 cores); every batch after that reuses the model.
        self.model = AutoModelForCausalLM.from_pretrained(
            files.directory, dtype=dtype, **files.load_kwargs()).to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.pad is None:
            raise ModelLoadError(f"rerank model {model!r} has neither a pad nor an end-of-sequence token")
        self.decode = tokenizer.batch_decode
        self._done = 0
        self._started = self._last_log = time.monotonic()

    def generate(self, prompts: list[list[int]]) -> tuple[list[str], list[int]]:
        """Token id lists -> answers and generated token counts (up to the first EOS)."""
        if not prompts:
            return [], []
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends where generation starts.
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)  # (batch, width)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)  # (batch, width)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.pad, eos_token_id=self.eos,
            )  # (batch, width + new)
        new = out[:, width:].cpu()  # (batch, new)
        counts = []
        for row in new.tolist():
            end = row.index(self.eos) + 1 if self.eos is not None and self.eos in row else len(row)
            counts.append(end)
        texts = self.decode([row[:n] for row, n in zip(new.tolist(), counts)], skip_special_tokens=True)
        return texts, counts

    def __call__(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt_ids").to_pylist()
        texts, counts = self.generate(prompts)
        self._report(batch.num_rows)
        return pa.table(
            {
                "user_id": batch.column("user_id"),
                "answer": pa.array(texts, pa.string()),
                "tokens_in": pa.array([len(p) for p in prompts], pa.int32()),
                "tokens_out": pa.array(counts, pa.int32()),
                "error": pa.nulls(batch.num_rows, pa.string()),
            },
            schema=ANSWERS,
        )

    def _report(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        if now - self._last_log >= PROGRESS_EVERY_S:
            rate = self._done / max(now - self._started, 1e-9)
            logger.info("rerank actor: %d users answered (%.2f users/s)", self._done, rate)
            self._last_log = now


def _quiet_gguf_progress_bar() -> None:
    """transformers draws its GGUF dequantisation with a tqdm bar of its own, which
    `disable_progress_bar` does not reach; turn that one off too (this process only)."""
    from functools import partial

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if getattr(gguf_utils, "tqdm", None) is tqdm:
        gguf_utils.tqdm = partial(tqdm, disable=True)


# -- vLLM through ray.data.llm (GPU clusters; not run here) --------------------------------


def vllm_processor_config(*, model: str, batch_size: int, concurrency: int, max_model_len: int | None):
    """The `ray.data.llm.vLLMEngineProcessorConfig` of the rerank stage.

    The driver sends token ids (`tokenized_prompt`), so the chat-template and tokenize
    stages are off and the engine reads exactly the tokens that were counted. Every request
    shares the template's opening instructions: prefix caching reuses their KV cache.
    A prompt the engine rejects becomes that user's `engine-error` fallback instead of
    failing the run.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs: dict[str, Any] = {"enable_prefix_caching": True}
    if max_model_len is not None:
        engine_kwargs["max_model_len"] = max_model_len
    return vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs,
        concurrency=concurrency,  # one engine per GPU (tensor_parallel_size 1)
        batch_size=batch_size,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=True,
        should_continue_on_error=True,
    )


def vllm_request(row: dict[str, Any], *, max_new_tokens: int) -> dict[str, Any]:
    """Preprocess for the processor: token ids plus greedy, schema-constrained sampling."""
    return {
        "tokenized_prompt": list(row["prompt_ids"]),
        "sampling_params": {
            "temperature": 0.0,
            "max_tokens": max_new_tokens,
            "detokenize": False,  # the processor's detokenize stage does it
            # vLLM's StructuredOutputsParams takes the schema as a JSON string; an explanation
            # prompt (no schema) is free text.
            **({"structured_outputs": {"json": row["answer_schema"]}} if row.get("answer_schema") else {}),
        },
    }


def vllm_answers(batch: pa.Table) -> pa.Table:
    """The processor's output rows -> ANSWERS. Rows the engine failed on carry
    `__inference_error__`; they keep their user id and get an empty answer."""
    n = batch.num_rows
    names = batch.column_names
    errors = batch.column("__inference_error__").to_pylist() if "__inference_error__" in names else [""] * n
    return pa.table(
        {
            "user_id": batch.column("user_id"),
            "answer": pa.array([t if not e else None for t, e in zip(batch.column("generated_text").to_pylist(), errors)], pa.string()),
            "tokens_in": pa.array(batch.column("num_input_tokens").to_pylist(), pa.int32()),
            "tokens_out": pa.array(batch.column("num_generated_tokens").to_pylist(), pa.int32()),
            "error": pa.array([e or None for e in errors], pa.string()),
        },
        schema=ANSWERS,
    )


def build_vllm_processor(*, model: str, max_new_tokens: int, batch_size: int, concurrency: int,
                         max_model_len: int | None):
    """A `ray.data.llm` Processor: dataset of `user_id`, `prompt_ids`, `answer_schema` ->
    the processor's rows (turn them into ANSWERS with `vllm_answers`). Needs vllm."""
    from functools import partial

    from ray.data.llm import build_processor

    config = vllm_processor_config(
        model=model, batch_size=batch_size, concurrency=concurrency, max_model_len=max_model_len
    )
    # The postprocess keeps every column: rows that failed skip it, and one block must
    # hold rows of one shape.
    return build_processor(config, preprocess=partial(vllm_request, max_new_tokens=max_new_tokens),
                           postprocess=lambda row: dict(row))


def answer_schema_json(schema: dict) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
