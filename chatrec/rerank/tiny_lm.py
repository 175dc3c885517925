"""A tiny causal language model with random weights, built offline from a config.

The fast tests' model: the rerank stage runs end to end in seconds with no download; the
prompts, batching, token accounting, parsing and every fallback are real, the answers are
noise. With random weights almost every user falls back (`not-json`), and the status counts
show it. `chatrec models tiny-lm --dest DIR` writes one. The demo's model is a real one,
the packaged SmolLM2-135M-Instruct (chatrec.model_loading.PACKAGED_LMS).
"""

from __future__ import annotations

from pathlib import Path

# Byte-level BPE over 1,024 tokens: every string is encodable (no unknown token) and a prompt
# costs about 2-3 characters a token, close enough to a real tokenizer for token accounting.
VOCAB_SIZE = 1024
# Rotary positions cost no weights, so a long context is free; 8,192 holds a 50-candidate prompt.
CONTEXT_LENGTH = 8192
PAD, EOS = "<|pad|>", "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# What the tokenizer is trained on: the prompt template's words, JSON, digits and a few
# common title words. Any other text still encodes, byte by byte.
_CORPUS = [
    '{"ranking": [{"item": 1, "explanation": "Because you liked it."}], "question": "Do you want more?"}',
    "You are a recommendation assistant. Rerank the candidates for this user and explain each choice "
    "in one short sentence in the user's own terms. Answer with JSON only.",
    "User profile: age: 24. gender: M. occupation: student. zip_code: 85711.",
    "Recently watched or bought, most recent first. Candidates. Categories: Action, Adventure, Animation, "
    "Children's, Comedy, Crime, Documentary, Drama, Fantasy, Film-Noir, Horror, Musical, Mystery, Romance, "
    "Sci-Fi, Thriller, War, Western. directed by: starring: The Love Star Wars Story Man Night Day City.",
    " ".join(str(i) for i in range(0, 2100)),
]


def write_tiny_causal_lm(dest: Path, *, seed: int = 0) -> Path:
    """Write a 2-layer, hidden-64 LLaMA-architecture causal LM with random weights and a
    byte-level BPE tokenizer (with a chat template) to `dest`; returns `dest`.

    The same seed writes the same weights. About 0.6 MB; loads with AutoModelForCausalLM.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, eos_token=EOS, model_max_length=CONTEXT_LENGTH
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=CONTEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    return dest
