"""The Chat-Rec stage: a causal language model reranks each user's candidates and explains them.

Modules, in data-flow order (the stage itself is pipelines/rerank.py):

    selection   who is reranked: rerank.users (all, a hashed sample, a segment), then the token budget
    prompt      versioned templates (templates/*.txt), rendered deterministically per user
    engines     prompts -> answers: transformers generate in Ray Data actors (CPU/GPU), or vLLM
                through ray.data.llm on GPU clusters; the driver-side tokenizer
    parsing     answers -> exactly K valid, distinct candidates per user, with a status and reason
    stats       the manifest's "rerank" section and its one-line summary
    tiny_lm     a tiny random causal LM built offline, for fast tests (the demo uses SmolLM2-135M)

Tested in tests/test_rerank_*.py: parsing against scripted answers, prompts, configuration and
the vLLM path's construction, model specs, the stage on a real local Ray (scripted engine, the
tiny LM and, slow, SmolLM2), and the full job with the stage on.
"""
