"""The whole job (`pipelines.full_run.run_job`) as sizes grow, and at the product's defaults.

- growth: base, items x10 and users x10, matcher off, short texts; each stage's seconds and
  how far its growth is from linear, with the peak RSS of the driver and of the workers
  per stage (streaming stages should stay flat as the users grow);
- the whole job at the product's defaults (the matcher on): wall time and each stage's share.
"""

from __future__ import annotations

import logging

from bench.context import Context
from bench.measure import StageTagger
from pipelines.full_run import run_job

logger = logging.getLogger("bench")


def _job(ctx: Context, items: int, users: int, **sections) -> dict:
    cfg = ctx.config(ctx.dataset(items, users), **sections)
    tagger = StageTagger(ctx.sampler)
    with ctx.sampler.window() as memory, tagger.attached():
        result = run_job(cfg)
    manifest = result.manifest
    return {
        "items": items, "users": users,
        "interactions": manifest["inputs"]["interactions"]["valid"],
        "wall_s": manifest["wall_seconds"],
        "run_dir": result.run_dir,
        "stages": {s["name"]: {"seconds": s["seconds"], "rows": s["rows"], "unit": s["unit"]}
                   for s in manifest["stages"]},
        "peak_memory": memory.to_dict(),
        "cluster": manifest["cluster"],
    }


def growth(ctx: Context) -> dict:
    sizes = ctx.sizes
    sections = {"matcher": {"enabled": False}, "encoder": {"max_length": sizes.grid_max_length}}
    points = {
        "base": (sizes.grid_items, sizes.grid_users),
        "items x10": (sizes.grid_items * 10, sizes.grid_users),
        "users x10": (sizes.grid_items, sizes.grid_users * 10),
    }
    runs = {}
    for name, (items, users) in points.items():
        logger.info("growth: %s (%d items, %d users)", name, items, users)
        runs[name] = _job(ctx, items, users, **sections)
    base = runs["base"]["stages"]
    factors = {}
    for name in ("items x10", "users x10"):
        factors[name] = {stage: round(v["seconds"] / base[stage]["seconds"], 2)
                         for stage, v in runs[name]["stages"].items() if base.get(stage, {}).get("seconds")}
    return {"max_length": sizes.grid_max_length, "matcher": False, "runs": runs, "time_factor": factors}


def whole_job(ctx: Context) -> dict:
    sizes = ctx.sizes
    logger.info("whole job at the defaults: %d items, %d users", sizes.job_items, sizes.job_users)
    run = _job(ctx, sizes.job_items, sizes.job_users)
    total = run["wall_s"]
    run["shares"] = {name: round(v["seconds"] / total, 3) for name, v in run["stages"].items()}
    return run
