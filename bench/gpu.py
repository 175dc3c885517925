"""The GPU path, where there is a GPU: the encoder in half precision and faiss-gpu, against
the device's measured matmul ceiling. Without one, it says so and measures nothing."""

from __future__ import annotations

import logging
import time

import numpy as np

from bench.context import Context
from bench.machine import gpu_description

logger = logging.getLogger("bench")

MATMUL_N = 8192  # fp16 GEMM of this size runs near the tensor cores' peak on current GPUs


def _matmul_ceiling_tflops(torch) -> float:
    a = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.float16)
    b = torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps = 20
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * MATMUL_N**3 * reps / (time.perf_counter() - start) / 1e12


def run(ctx: Context) -> dict:
    gpu = gpu_description()
    if not gpu["available"]:
        logger.info("no GPU: GPU path not measured")
        return {"measured": False, "note": "no GPU: GPU path not measured"}
    import torch

    from bench.embedding import item_text_sample
    from chatrec.encoder import TextEncoder

    # The job's catalogue, repeated: enough batches of 256 to keep a GPU busy for seconds.
    texts = item_text_sample(ctx, ctx.sizes.job_items).column("text").to_pylist() * 8

    ceiling = _matmul_ceiling_tflops(torch)
    encoder = TextEncoder(model=str(ctx.model_dir), fingerprint=None, max_length=128, batch_size=256,
                          device="cuda", precision="fp16")
    encoder.encode(texts[:256])
    torch.cuda.synchronize()
    start = time.perf_counter()
    encoder.encode(texts)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(len(x) for x in encoder.tokenizer(texts, truncation=True, max_length=128)["input_ids"])
    # Forward FLOPs ~ 2 x (non-embedding parameters) per token; attention adds little at <= 128 tokens.
    params = sum(p.numel() for n, p in encoder.model.named_parameters() if "embeddings" not in n)
    achieved = 2 * params * tokens / seconds / 1e12
    result = {"measured": True, "devices": gpu["devices"], "matmul_fp16_tflops": round(ceiling, 1),
              "encoder_texts_per_s": round(len(texts) / seconds, 1), "encoder_tflops": round(achieved, 3),
              "fraction_of_ceiling": round(achieved / ceiling, 4)}
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        rng = np.random.default_rng(0)
        items = rng.standard_normal((ctx.sizes.topk_items, 384)).astype(np.float32)
        queries = rng.standard_normal((ctx.sizes.topk_users, 384)).astype(np.float32)
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(384))
        index.add(items)
        index.search(queries[:100], 20)
        start = time.perf_counter()
        index.search(queries, 20)
        result["faiss_gpu_users_per_s"] = round(len(queries) / (time.perf_counter() - start), 1)
    else:
        result["faiss_gpu"] = "faiss is a CPU build: faiss-gpu not measured"
    return result
