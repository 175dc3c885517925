"""The embedding stage against its bare kernel and its de-facto peer, and what it is made of.

- stage: `pipelines.embed_items.embed_items`, the product's Ray Data actor pool, writing Parquet;
- loop: the same `TextEncoder.encode` in one process, model loaded beforehand (the kernel);
- peer: `SentenceTransformer.encode` on the same model, texts, batch size and max length.

Then the profile: the stage's fixed cost (a tiny input; a no-op actor pool through the same
Ray Data plumbing; imports and model load in a fresh process), tokenisation's share, padding
with and without length sorting, batch sizes, and actors x threads.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from bench.context import Context
from bench.measure import Summary, interleave, paired_ratio, timed
from chatrec.encoder import TextEncoder, fixed_size_list_to_numpy
from chatrec.model_loading import model_fingerprint
from chatrec.runtime import cluster_resources, encoder_plan, encoder_precision
from pipelines.embed_items import embed_items
from pipelines.ingest import item_texts, read_inputs

logger = logging.getLogger("bench")

BATCH_SIZES = (32, 64, 128)  # 16 was slower than 32 in every earlier run
TINY = 16  # texts in the fixed-cost probe: one short batch


class _NoOp:
    """An actor that returns its block untouched: Ray Data's cost without the encoder's."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.select(["item_id"])


_STARTUP_PROBE = """
import json, time
t0 = time.perf_counter()
import torch, transformers
from transformers import AutoModel, AutoTokenizer
t1 = time.perf_counter()
from chatrec.model_loading import model_fingerprint
model_fingerprint(__import__("pathlib").Path({path!r}))
t2 = time.perf_counter()
AutoTokenizer.from_pretrained({path!r}); AutoModel.from_pretrained({path!r}).eval()
t3 = time.perf_counter()
print(json.dumps({{"imports_s": t1 - t0, "fingerprint_s": t2 - t1, "model_load_s": t3 - t2}}))
"""


def item_text_sample(ctx: Context, n: int) -> pa.Table:
    """The first `n` item texts of a synthetic catalogue, rendered by the product."""
    data = ctx.dataset(max(n, ctx.sizes.job_items), ctx.sizes.job_users)
    cfg = ctx.config(data)
    inputs = read_inputs(cfg.inputs, cfg.item_text)
    return item_texts(inputs, cfg.item_text).slice(0, n)


def _padding(tokenizer, texts: list[str], max_length: int, batch: int, block: int) -> dict:
    """Tokens computed per real token, with length-sorted batches (what TextEncoder does
    inside each block) and in arrival order."""
    lengths = np.array([len(x) for x in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])

    def padded(order_within_block: bool) -> int:
        total = 0
        for start in range(0, len(lengths), block):
            part = lengths[start:start + block]
            part = np.sort(part) if order_within_block else part
            for b in range(0, len(part), batch):
                chunk = part[b:b + batch]
                total += int(chunk.max()) * len(chunk)
        return total

    real = int(lengths.sum())
    return {"real_tokens": real, "mean_tokens": round(real / len(lengths), 1),
            "truncated": int((lengths >= max_length).sum()),
            "padded_per_real_sorted": round(padded(True) / real, 3),
            "padded_per_real_unsorted": round(padded(False) / real, 3)}


def run(ctx: Context) -> dict:
    sizes = ctx.sizes
    cfg = ctx.config(ctx.dataset(max(sizes.embed_texts, sizes.job_items), sizes.job_users))
    enc = cfg.encoder
    resources = cluster_resources()
    plan = encoder_plan(enc, resources)
    precision = encoder_precision(enc, plan)
    fingerprint = model_fingerprint(ctx.model_dir)
    texts_table = item_text_sample(ctx, sizes.embed_texts)
    texts = texts_table.column("text").to_pylist()
    n = len(texts)
    logger.info("embedding: %d texts, %s, batch %d, max_length %d", n, plan.describe(), enc.batch_size, enc.max_length)

    loop = TextEncoder(model=enc.model, fingerprint=fingerprint, max_length=enc.max_length,
                       batch_size=enc.batch_size, num_threads=plan.threads)
    dim = loop.dim
    loop.encode(texts[:enc.batch_size])  # first-call allocations are not the kernel's cost
    peer, peer_note = _peer(ctx, enc.max_length)

    outputs: dict[str, object] = {}

    def stage(name: str = "stage", texts_in: pa.Table = texts_table, encoder=enc, stage_plan=plan) -> str:
        path = ctx.scratch(f"embed-{name}")
        embed_items(texts_in, encoder=encoder, plan=stage_plan, precision=precision,
                    fingerprint=fingerprint, dim=dim, out_path=path)
        return path

    tiny_table = item_text_sample(ctx, TINY)
    cases = {
        "stage": lambda: outputs.__setitem__("stage", stage()),
        "loop": lambda: outputs.__setitem__("loop", loop.encode(texts)),
        # The stage on one short batch: its fixed cost, paired with the runs above.
        f"stage, {TINY} texts": lambda: stage("tiny", tiny_table),
    }
    if peer is not None:
        cases["sentence-transformers"] = lambda: outputs.__setitem__("peer", peer.encode(
            texts, batch_size=enc.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False))
    with ctx.sampler.window() as memory:
        seconds = interleave(cases, sizes.embed_reps)
    tiny = seconds.pop(f"stage, {TINY} texts")
    summary = {name: Summary.of(values) for name, values in seconds.items()}
    result = {
        "texts": n, "model": enc.model, "max_length": enc.max_length, "batch_size": enc.batch_size,
        "rows_per_block": enc.rows_per_block, "plan": plan.describe(), "precision": precision,
        "seconds": {k: v.to_dict() for k, v in summary.items()},
        "texts_per_s": {k: round(n / v.median, 1) for k, v in summary.items()},
        "ratio_stage_vs_loop": paired_ratio(seconds["loop"], seconds["stage"]).to_dict(3),
        "peak_memory": memory.to_dict(),
        "peer": peer_note,
    }
    if peer is not None:
        result["ratio_stage_vs_peer"] = paired_ratio(seconds["sentence-transformers"], seconds["stage"]).to_dict(3)
        result["ratio_loop_vs_peer"] = paired_ratio(seconds["sentence-transformers"], seconds["loop"]).to_dict(3)
    result["agreement"] = _agreement(outputs, texts_table)

    result["profile"] = _profile(ctx, loop, texts, tiny_table, tiny, plan, seconds, enc.rows_per_block)
    result["batch_sweep"] = _batch_sweep(ctx, enc, fingerprint, plan, texts[: sizes.sweep_texts])
    result["threads"] = _thread_scaling(loop, texts[: sizes.sweep_texts], plan.threads or 1)
    result["layouts"] = _layouts(ctx, cfg, texts_table.slice(0, max(2, n // 2)), stage)
    return result


def _peer(ctx: Context, max_length: int):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        return None, f"sentence-transformers is not installed ({e}); the plain loop is the only reference"
    model = SentenceTransformer(str(ctx.model_dir), device="cpu")
    model.max_seq_length = max_length  # the same truncation as the stage
    return model, f"sentence-transformers {__import__('sentence_transformers').__version__}, max_seq_length {max_length}"


def _agreement(outputs: dict, texts_table: pa.Table) -> dict:
    """The three produce the same vectors (up to float error): the comparison is like for like."""
    loop = outputs["loop"]
    table = pq.read_table(outputs["stage"]).sort_by("item_id")
    order = np.argsort(np.asarray(texts_table.column("item_id").to_pylist(), dtype=object), kind="stable")
    stage = fixed_size_list_to_numpy(table.column("embedding"))
    out = {"stage_vs_loop_max_abs": float(np.abs(stage - loop[order]).max())}
    if "peer" in outputs:
        out["peer_vs_loop_max_abs"] = float(np.abs(np.asarray(outputs["peer"]) - loop).max())
    return out


def _profile(ctx: Context, loop: TextEncoder, texts: list[str], tiny_table: pa.Table, tiny: list[float], plan,
             seconds: dict, rows_per_block: int) -> dict:
    """Where the stage's time goes beyond the loop's."""
    n = len(texts)
    tokenise_s, _ = timed(lambda: loop.tokenizer(texts, truncation=True, max_length=loop.max_length))
    loop_s = Summary.of(seconds["loop"]).median
    stage_s = Summary.of(seconds["stage"]).median

    noop = [timed(lambda: _noop_stage(ctx, tiny_table, plan))[0] for _ in range(2)]
    probe = subprocess.run([sys.executable, "-c", _STARTUP_PROBE.format(path=str(ctx.model_dir))],
                           capture_output=True, text=True, check=True)
    startup = {k: round(v, 2) for k, v in json.loads(probe.stdout.strip().splitlines()[-1]).items()}
    # A plain script pays the imports and the model load too: the stage against that.
    script_s = startup["imports_s"] + startup["model_load_s"] + loop_s

    fixed = Summary.of(tiny).median - TINY * loop_s / n  # a tiny input's time, less its encoding
    marginal = stage_s - fixed  # what the stage spends per text once started
    loop_rate = n / loop_s
    steady_rate = n / marginal if marginal > 0 else float("nan")
    # Smallest catalogue at which the stage reaches 0.8x the loop: fixed + N / steady <= N / (0.8 loop).
    gap = 1 / (0.8 * loop_rate) - 1 / steady_rate
    break_even = int(np.ceil(fixed / gap)) if gap > 0 else None
    return {
        "tokenise_s": round(tokenise_s, 3), "tokenise_share_of_loop": round(tokenise_s / loop_s, 3),
        "padding": _padding(loop.tokenizer, texts, loop.max_length, loop.batch_size, rows_per_block),
        "tiny_stage_s": [round(x, 2) for x in tiny], "noop_stage_s": [round(x, 2) for x in noop],
        "fresh_process": startup,
        "script_s": round(script_s, 2), "ratio_stage_vs_script": round(script_s / stage_s, 3),
        "fixed_cost_s": round(fixed, 2),
        "steady_texts_per_s": round(steady_rate, 1), "loop_texts_per_s": round(loop_rate, 1),
        "steady_ratio": round(steady_rate / loop_rate, 3),
        "break_even_texts": break_even,
    }


def _noop_stage(ctx: Context, table: pa.Table, plan) -> None:
    """The stage's plumbing (blocks in, one actor pool, Parquet out) with nothing to compute."""
    ray.data.from_arrow([table]).map_batches(
        _NoOp, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=plan.num_actors),
        num_cpus=plan.num_cpus,
    ).write_parquet(ctx.scratch("noop"))


def _batch_sweep(ctx: Context, enc, fingerprint: str, plan, texts: list[str]) -> dict:
    encoders = {b: TextEncoder(model=enc.model, fingerprint=fingerprint, max_length=enc.max_length, batch_size=b,
                               num_threads=plan.threads) for b in BATCH_SIZES}
    for e in encoders.values():
        e.encode(texts[:8])
    seconds = interleave({f"batch {b}": (lambda e=e: e.encode(texts)) for b, e in encoders.items()}, 2)
    return {"texts": len(texts), "texts_per_s": {
        name: round(len(texts) / Summary.of(v).median, 1) for name, v in seconds.items()}}


def _thread_scaling(loop: TextEncoder, texts: list[str], threads: int) -> dict:
    """The same encoder on 1 and on `threads` torch threads: how well one forward pass uses a
    second core decides between one wide actor and several narrow ones."""
    import torch

    def on(n: int):
        def go() -> None:
            torch.set_num_threads(n)
            loop.encode(texts)
        return go

    counts = sorted({1, threads})
    seconds = interleave({f"{n} thread(s)": on(n) for n in counts}, 2)
    torch.set_num_threads(threads)
    rates = {name: round(len(texts) / Summary.of(v).median, 1) for name, v in seconds.items()}
    out = {"texts": len(texts), "texts_per_s": rates}
    if len(counts) == 2:
        out["speedup"] = round(rates[f"{threads} thread(s)"] / rates["1 thread(s)"], 2)
    return out


def _layouts(ctx: Context, cfg, texts_table: pa.Table, stage) -> dict:
    """One actor on every core against one single-threaded actor per core, blocks cut so
    that both layouts have work for every actor."""
    resources = cluster_resources()
    half = max(1, texts_table.num_rows // 2)
    layouts = {}
    for name, actors, threads in (("1 actor x 2 threads", "auto", "auto"), ("2 actors x 1 thread", 2, 1)):
        if resources.cpus < 2:
            break
        encoder = cfg.encoder.model_copy(update={"num_actors": actors, "cpus_per_actor": threads,
                                                 "rows_per_block": half})
        layouts[name] = (encoder, encoder_plan(encoder, resources))
    if not layouts:
        return {"skipped": "one CPU: nothing to lay out"}
    seconds = interleave({name: (lambda e=e, p=p: stage("layout", texts_table, e, p)) for name, (e, p) in
                          layouts.items()}, 1)
    return {"texts": texts_table.num_rows, "rows_per_block": half, "texts_per_s": {
        name: round(texts_table.num_rows / v[0], 1) for name, v in seconds.items()},
        "plans": {name: p.describe() for name, (_, p) in layouts.items()}}
