"""The top-K stage against a bare `faiss.IndexFlatIP.search`, what lies between them, and
approximate indexes (IVF, HNSW) with their recall against exact search.

Item vectors carry the synthetic catalogue's cluster structure (bench.context.clustered_vectors);
user vectors are the product's recency-weighted mean of each user's history, and the
histories, the catalogue and the stage are the product's own.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from bench.context import Context, clustered_vectors, table_blocks
from bench.measure import Summary, interleave, paired_ratio, timed
from chatrec import schemas
from chatrec.catalogue import build_catalogue
from chatrec.encoder import to_fixed_size_list
from chatrec.histories import build_histories
from chatrec.recommender import Recommender
from chatrec.retrieval import FIRST_DEPTH, ExactIndex
from chatrec.runtime import cluster_resources, retrieval_plan
from chatrec.user_vectors import recency_weighted_mean
from pipelines.embed_users import USERS_PER_BLOCK
from pipelines.ingest import item_texts, read_inputs
from pipelines.recommend import recommend

logger = logging.getLogger("bench")

DIM = 384  # all-MiniLM-L6-v2's
SEARCH_BATCHES = (256, 1024, 4096)
IVF_NPROBES = (1, 4, 16)
HNSW_EF = (16, 64, 256)
HNSW_M = 32  # FAISS's usual choice for 384-dim vectors: recall high at moderate memory
TINY = 64  # users in the fixed-cost probe: one small block


class Workload:
    """Items, their vectors and catalogue, and every user's vector and history."""

    def __init__(self, ctx: Context) -> None:
        sizes = ctx.sizes
        data = ctx.dataset(sizes.topk_items, sizes.topk_users)
        cfg = ctx.config(data)
        inputs = read_inputs(cfg.inputs, cfg.item_text)
        texts = item_texts(inputs, cfg.item_text)
        # Synthetic ids are zero-padded numbers, so row i of the sorted catalogue is item i.
        self.vectors = clustered_vectors(ctx.latent(sizes.topk_items, sizes.topk_users), DIM, ctx.seed)
        self.catalogue = build_catalogue(inputs.items.table, self.vectors, None)
        population = build_histories(inputs.interactions.table, texts, max_items=cfg.history.max_items)
        histories = population.histories
        self.queries = recency_weighted_mean(self.vectors, histories.column("recent_rows").combine_chunks(),
                                             cfg.history.half_life)  # (users, dim)
        self.table = histories.append_column("embedding", to_fixed_size_list(self.queries)).cast(
            schemas.user_vectors(DIM))
        self.seen = [np.asarray(s, np.int64) for s in histories.column("seen_rows").to_pylist()]
        self.retrieval = cfg.retrieval
        self.path = ctx.scratch("user-vectors")
        # The user stage writes one file per block: the top-K stage reads the same layout.
        for i, block in enumerate(table_blocks(self.table, USERS_PER_BLOCK)):
            pq.write_table(block, f"{self.path}/part-{i:05d}.parquet")

    @property
    def users(self) -> int:
        return self.table.num_rows


def run(ctx: Context) -> dict:
    sizes = ctx.sizes
    w = Workload(ctx)
    k = w.retrieval.top_k
    plan = retrieval_plan(w.retrieval, cluster_resources())
    threads = plan.threads or 1
    logger.info("top-K: %d users x %d items, K %d, %s", w.users, len(w.vectors), k, plan.describe())
    index = ExactIndex.build(w.vectors)
    index_ref, catalogue_ref = ray.put(index.to_bytes()), ray.put(w.catalogue)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(w.vectors)
    outputs = {}

    def stage() -> None:
        outputs["stage"] = ctx.scratch("recommendations")
        recommend(user_vectors_path=w.path, index_ref=index_ref, catalogue_ref=catalogue_ref, retrieval=w.retrieval,
                  plan=plan, run_id="bench", out_path=outputs["stage"])

    def kernel() -> None:
        faiss.omp_set_num_threads(threads)
        outputs["kernel"] = flat.search(w.queries, k)

    tiny_path = ctx.scratch("user-vectors-tiny")
    pq.write_table(w.table.slice(0, TINY), f"{tiny_path}/part-00000.parquet")

    def tiny() -> None:
        recommend(user_vectors_path=tiny_path, index_ref=index_ref, catalogue_ref=catalogue_ref,
                  retrieval=w.retrieval, plan=plan, run_id="bench", out_path=ctx.scratch("recommendations-tiny"))

    with ctx.sampler.window() as memory:
        seconds = interleave({"stage": stage, "faiss": kernel, f"stage, {TINY} users": tiny}, sizes.topk_reps)
    tiny_s = Summary.of(seconds.pop(f"stage, {TINY} users")).median
    summary = {name: Summary.of(v) for name, v in seconds.items()}
    result = {
        "users": w.users, "items": len(w.vectors), "dim": DIM, "top_k": k, "plan": plan.describe(),
        "search_batch_size": w.retrieval.batch_size,
        "seconds": {n: s.to_dict() for n, s in summary.items()},
        "users_per_s": {n: round(w.users / s.median, 1) for n, s in summary.items()},
        "ratio_stage_vs_faiss": paired_ratio(seconds["faiss"], seconds["stage"]).to_dict(3),
        "peak_memory": memory.to_dict(),
    }
    result["profile"], recommendations = _profile(w, index, threads, summary, tiny_s)
    result["search_batch_sweep"] = _search_batches(w, index, threads)
    result["ann"] = _approximate(w, outputs["kernel"][1], threads)
    result["stage_output_dir"] = outputs["stage"]
    return result, recommendations


def _profile(w: Workload, index: ExactIndex, threads: int, summary: dict, tiny_s: float) -> tuple[dict, pa.Table]:
    """The stage's work in one process: exact search with exclusions, then the same plus
    reasons and Arrow rows (the Recommender the actors run), without Ray."""
    k = w.retrieval.top_k
    faiss.omp_set_num_threads(threads)
    batch = w.retrieval.batch_size

    def excluding() -> None:
        for start in range(0, w.users, batch):
            index.search_excluding(w.queries[start:start + batch], k, w.seen[start:start + batch])

    excluding_s, _ = timed(excluding)
    recommender = Recommender(index=index.to_bytes(), catalogue=w.catalogue, top_k=k, search_batch_size=batch,
                              run_id="bench", threads=threads)
    in_process_s, parts = timed(lambda: [recommender(b) for b in table_blocks(w.table, USERS_PER_BLOCK)])
    n_seen = np.array([len(s) for s in w.seen])
    # The first search's depth for everyone; users with more seen items than FIRST_DEPTH may
    # be searched again, K + their seen count rounded up to a power of two (an upper bound).
    depth = k + np.where(n_seen > FIRST_DEPTH, FIRST_DEPTH + 2 ** np.ceil(np.log2(np.maximum(n_seen, 1))), FIRST_DEPTH)
    stage_s = summary["stage"].median
    kernel_s = summary["faiss"].median
    fixed_s = tiny_s - in_process_s * TINY / w.users  # a tiny input's time, less its work
    return {
        "search_excluding_s": round(excluding_s, 3),
        "recommender_in_process_s": round(in_process_s, 3),
        "reasons_and_rows_s": round(in_process_s - excluding_s, 3),
        "orchestration_s": round(stage_s - in_process_s, 3),
        "tiny_stage_s": round(tiny_s, 3), "fixed_cost_s": round(fixed_s, 3),
        "shares_of_stage": {
            "faiss search at K (the kernel's work)": round(kernel_s / stage_s, 3),
            "deeper search for exclusions": round((excluding_s - kernel_s) / stage_s, 3),
            "because-items, reasons and Arrow rows": round((in_process_s - excluding_s) / stage_s, 3),
            f"fixed start-up (a {TINY}-user run: actor, index, catalogue, Ray Data)": round(fixed_s / stage_s, 3),
            "the rest: the same work inside the actor beside Ray's read and write tasks":
                round((stage_s - fixed_s - in_process_s) / stage_s, 3),
        },
        "mean_search_depth": round(float(depth.mean()), 1),
        "seen_median": float(np.median(n_seen)), "seen_max": int(n_seen.max()),
    }, pa.concat_tables(parts)


def _search_batches(w: Workload, index: ExactIndex, threads: int) -> dict:
    """Users per FAISS call (retrieval.batch_size), on the search with exclusions."""
    faiss.omp_set_num_threads(threads)
    k = w.retrieval.top_k

    def run_with(batch: int):
        def go() -> None:
            for start in range(0, w.users, batch):
                index.search_excluding(w.queries[start:start + batch], k, w.seen[start:start + batch])
        return go

    seconds = interleave({f"batch {b}": run_with(b) for b in SEARCH_BATCHES}, 2)
    return {"users_per_s": {name: round(w.users / Summary.of(v).median, 1) for name, v in seconds.items()}}


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / k for f, e in zip(found, exact)]))


def _approximate(w: Workload, exact: np.ndarray, threads: int) -> dict:
    """IVF-Flat and HNSW on the same vectors: build time, search throughput, recall@K."""
    faiss.omp_set_num_threads(threads)
    k = w.retrieval.top_k
    n = len(w.vectors)
    rows = []
    # nlist ~ sqrt(items), a power of two: FAISS's rule of thumb, and >= 39 training points a list.
    nlist = int(2 ** round(np.log2(max(np.sqrt(n), 1))))
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    build_s, _ = timed(lambda: (ivf.train(w.vectors), ivf.add(w.vectors)))
    for nprobe in IVF_NPROBES:
        ivf.nprobe = nprobe
        s, (_, found) = timed(lambda: ivf.search(w.queries, k))
        rows.append({"index": f"IVF{nlist},Flat", "param": f"nprobe {nprobe}", "build_s": round(build_s, 2),
                     "users_per_s": round(w.users / s, 1), "recall": round(_recall(found, exact), 4)})
    hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    build_s, _ = timed(lambda: hnsw.add(w.vectors))
    for ef in HNSW_EF:
        hnsw.hnsw.efSearch = ef
        s, (_, found) = timed(lambda: hnsw.search(w.queries, k))
        rows.append({"index": f"HNSW{HNSW_M},Flat", "param": f"efSearch {ef}", "build_s": round(build_s, 2),
                     "users_per_s": round(w.users / s, 1), "recall": round(_recall(found, exact), 4)})
    return {"recall_at": k, "rows": rows}
