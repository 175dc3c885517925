"""fusion: a matcher trained in this run is run over the catalogue (its item tower's
vectors), and its fusion with a collaborative partner is tuned on the same validation
hold-out. Part of train-matcher: inside its completion marker."""

from __future__ import annotations

from chatrec.stage_metrics import StageMetric
from pipelines.stage_runner import Stage
from pipelines.stages.context import RunContext
from pipelines.train_matcher import matcher_artifacts


def _fuse(ctx: RunContext, m: StageMetric) -> None:
    ctx.matcher = matcher_artifacts(ctx.trained, text=ctx.text_vectors, item_ids=ctx.item_ids, log=ctx.log,
                                    fusion=ctx.cfg.matcher.fusion, profiles=ctx.profiles)
    m.rows = len(ctx.item_ids)
    fusion = ctx.matcher.manifest.get("fusion")
    m.detail = f"{fusion['partner']}, two-tower weight {fusion['weight']}" if fusion else "off"


STAGE = Stage("fusion", "items", run=_fuse, when=lambda ctx: ctx.trained is not None)
