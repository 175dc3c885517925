"""cluster (driver step): join or start Ray and size the actor pools from its resources.

It comes after read+validate and item-text, which need no Ray: bad input is reported
without waiting for a cluster to start (seconds to a minute)."""

from __future__ import annotations

import hashlib
import logging

from chatrec.embedding_cache import encoder_key
from chatrec.item_text import TEMPLATE_VERSION
from chatrec.runtime import connect as connect_ray
from chatrec.runtime import encoder_plan, encoder_precision, retrieval_plan
from pipelines.stages.context import RunContext

logger = logging.getLogger(__name__)


def connect(ctx: RunContext) -> None:
    cfg = ctx.cfg
    ctx.resources = resources = connect_ray(cfg.ray)
    ctx.enc_plan = encoder_plan(cfg.encoder, resources)
    ctx.precision = encoder_precision(cfg.encoder, ctx.enc_plan)
    ctx.topk_plan = retrieval_plan(cfg.retrieval, resources)
    logger.info(
        "cluster: %d CPUs, %d GPUs on %d node(s); encoder %s, %s; top-K %s",
        resources.cpus, resources.gpus, resources.nodes, ctx.enc_plan.describe(), ctx.precision,
        ctx.topk_plan.describe(),
    )
    ctx.cache_key = encoder_key(fingerprint=ctx.fingerprint, max_length=cfg.encoder.max_length,
                                precision=ctx.precision)
    ctx.text_fingerprint = hashlib.sha256(f"{ctx.cache_key}:{TEMPLATE_VERSION}".encode()).hexdigest()[:16]
