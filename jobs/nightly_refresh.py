"""The nightly refresh: today's catalogue and log, building on the run LATEST names.

    python -m jobs.nightly_refresh --config CONFIG.yaml [--run-id ID] [--output LOC] [--keep N] [-v]

Only items whose rendered text changed, or that are new, are embedded (the embedding cache
serves the rest); removed items leave the index; the matcher is reused unless
`refresh.retrain` calls for training; users whose history did not change keep their
vectors; top-K is recomputed for every user, so new items reach anyone's list the same
night through their text. The summary counts items added/changed/removed/reused and users
recomputed, and names the previous run.

A scheduler that passes the night as the run id (`--run-id nightly-2024-06-01`) gets:
  - after a crash (driver killed, node lost): the retry resumes that night's run, skipping
    the stages it completed;
  - after a night that already published: exit code 4 instead of a second run.
Two refreshes of one output at once: the second exits with code 4 (the output is locked).

    1. arguments and logging
    2. the config, with this night's run id (--run-id, or nightly-<UTC time>-<suffix>)
    3. the refresh (pipelines.full_run.run_job with refresh=True), then retention (--keep)
    4. the summary
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatrec.entrypoint import configure_logging, job_main
from jobs.full_run import build_parser, overrides, run_summary

JOB = "jobs.nightly_refresh"


def nightly_run_id() -> str:
    from chatrec.manifest import new_run_id

    return f"nightly-{new_run_id()}"


def build_nightly_parser() -> argparse.ArgumentParser:
    return build_parser(
        JOB,
        description="Nightly refresh: rerun on the current catalogue and log, reusing the run LATEST names "
        "(embedding cache, matcher per refresh.retrain, unchanged users' vectors); top-K for every user. "
        "A retry with the same --run-id resumes an interrupted night.",
        default_run_id="nightly-<UTC time>-<suffix>",
    )


def nightly_refresh(argv: list[str] | None = None) -> dict[str, Any]:
    # 1. arguments and logging
    args = build_nightly_parser().parse_args(argv)
    configure_logging(args.verbose)
    from chatrec.config import load_config
    from pipelines.full_run import run_job as run_pipeline

    # 2. config and run id
    args.run_id = args.run_id or nightly_run_id()
    cfg = load_config(args.config, overrides(args))
    # 3. the refresh
    result = run_pipeline(cfg, refresh=True)
    # 4. summary
    return {"incremental": True, **run_summary(result, cfg.output.path)}


def main(argv: list[str] | None = None) -> int:
    return job_main(lambda: nightly_refresh(argv), job=JOB)


if __name__ == "__main__":
    sys.exit(main())
