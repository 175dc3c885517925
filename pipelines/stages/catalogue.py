"""catalogue (driver step): the item catalogue and its exact index over the vectors items are
scored by, put into the object store once for the actors of the stages after it."""

from __future__ import annotations

import ray

from chatrec.catalogue import build_catalogue
from chatrec.retrieval import ExactIndex
from pipelines.stages.context import RunContext


def build(ctx: RunContext) -> None:
    vectors = ctx.item_vectors
    ctx.catalogue = build_catalogue(ctx.inputs.items.table, vectors, ctx.inputs.knowledge)
    ctx.catalogue_ref = ray.put(ctx.catalogue)
    ctx.index_ref = ray.put(ExactIndex.build(vectors).to_bytes())
