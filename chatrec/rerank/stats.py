"""The rerank stage's numbers: the manifest's "rerank" section and its one-line summary."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from chatrec.config import RerankConfig
from chatrec.rerank import parsing


def stage_stats(cfg: RerankConfig, status: pa.Table, *, template, fingerprint, engine, plan, top_k, new_tokens,
                selected, prompted, spent, gen_seconds, context_length, seconds,
                explanations: list[tuple[str, str | None]] = (), explain: dict | None = None) -> dict:
    """Counts by status and reason, tokens in/out and throughput, template and model, and
    the explanations' grounding (`explanations`: each checked sentence and its failure code)."""
    df = pl.from_arrow(status)
    by_status = {s: 0 for s in parsing.STATUSES}
    by_status.update(dict(df.group_by("status").len().iter_rows()))
    by_reason = dict(sorted(df.filter(pl.col("reason").is_not_null()).group_by("reason").len().iter_rows()))
    tokens_in, tokens_out = int(df["tokens_in"].sum()), int(df["tokens_out"].sum())
    return {
        "model": {"spec": cfg.model, "fingerprint": fingerprint, "engine": engine,
                  "actors": plan.describe() if plan is not None else "vllm", "context_length": context_length},
        "template": {"name": template.name, "sha256": template.sha256, "version": template.version},
        "candidates": cfg.candidates,
        "top_k": top_k,
        "max_new_tokens": new_tokens,
        "users_spec": cfg.users,
        "token_budget": cfg.token_budget,
        "users": {"total": df.height, "selected": selected, "prompted": prompted,
                  **{s.replace("-", "_"): by_status[s] for s in parsing.STATUSES}},
        "by_reason": by_reason,
        "explanations": {**explanation_stats(explanations), "explain_prompts": explain or {}},
        "tokens": {"in": tokens_in, "out": tokens_out, "admitted": spent},
        "generate_seconds": round(gen_seconds, 3),
        "seconds": round(seconds, 3),
        "tokens_per_s": round((tokens_in + tokens_out) / gen_seconds, 1) if gen_seconds > 0 and prompted else 0.0,
        "output_tokens_per_s": round(tokens_out / gen_seconds, 1) if gen_seconds > 0 and prompted else 0.0,
        "seconds_per_user": round(gen_seconds / prompted, 4) if prompted else 0.0,
    }


EXAMPLES_PER_CODE = 2


def explanation_stats(checked: list[tuple[str, str | None]]) -> dict:
    """The model's explanations: how many it wrote, the share that passed the grounding check
    (chatrec.rerank.grounding; the rest were replaced by the template reason, counted by
    code), the share of distinct sentences among the grounded, and their mean length."""
    kept = [sentence for sentence, code in checked if code is None]
    replaced: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for sentence, code in checked:
        if code is not None:
            replaced[code] = replaced.get(code, 0) + 1
            if len(examples.setdefault(code, [])) < EXAMPLES_PER_CODE:
                examples[code].append(sentence)
    return {
        "written": len(checked),
        "grounded": len(kept),
        "grounded_share": round(len(kept) / len(checked), 4) if checked else None,
        "replaced": dict(sorted(replaced.items())),
        "distinct_share": round(len(set(kept)) / len(kept), 4) if kept else None,
        "mean_chars": round(sum(map(len, kept)) / len(kept), 1) if kept else None,
        # What failed, in the model's words: the first few per code (the output keeps the reason).
        "replaced_examples": dict(sorted(examples.items())),
    }


def describe(stats: dict) -> str:
    """One line for the stage log and the summary: statuses, reasons, tokens."""
    users = stats["users"]
    reasons = ", ".join(f"{r} {n}" for r, n in stats["by_reason"].items())
    return (f"used {users['used']}, partial {users['partial']}, fallback {users['fallback']}, "
            f"not selected {users['not_selected']}" + (f" ({reasons})" if reasons else "")
            + f"; {stats['tokens']['in']} tokens in, {stats['tokens']['out']} out"
            + (f"; explanations grounded {ex['grounded']}/{ex['written']}" if (ex := stats.get("explanations"))
               and ex["written"] else ""))
