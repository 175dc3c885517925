"""The nightly refresh. Today it is a full re-embed: the full job on the current catalogue
and log, published under a fresh run id.

    python -m jobs.nightly_refresh --config CONFIG.yaml [--run-id ID] [--output LOC] [-v]

The incremental refresh (re-embed only the items whose text or model changed, from an
embedding cache keyed by text hash and model fingerprint, and resume interrupted stages)
is not built yet. Until it is, this job does exactly what jobs.full_run does, with a run id
of its own, and its summary says "incremental": false. Schedulers can call it by its final
name now; the day it becomes incremental, only the summary changes.

A scheduler that passes the night as the run id (`--run-id nightly-2024-06-01`) gets
exit code 4 from a retry of a night that already published, instead of a second run.

    1. arguments and logging
    2. the config, with this night's run id (--run-id, or nightly-<UTC time>-<suffix>)
    3. the full job (pipelines.full_run.run_job): every item is re-embedded
    4. the summary, marked "incremental": false
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatrec.entrypoint import configure_logging, job_main
from jobs.full_run import build_parser, overrides, run_summary

JOB = "jobs.nightly_refresh"
MODE = {
    "incremental": False,
    "mode": "full re-embed",
    "note": "the incremental refresh (embedding cache, resumable stages) is not built yet: "
    "every item was embedded again",
}


def nightly_run_id() -> str:
    from chatrec.manifest import new_run_id

    return f"nightly-{new_run_id()}"


def build_nightly_parser() -> argparse.ArgumentParser:
    return build_parser(
        JOB,
        description="Nightly refresh. Today a FULL re-embed of the current catalogue and log under a "
        "fresh run id: the incremental refresh (embedding cache, resumable stages) is not built yet, "
        'and the JSON summary says "incremental": false.',
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
    # 3. the full job
    result = run_pipeline(cfg)
    # 4. summary
    return {**MODE, **run_summary(result, cfg.output.path)}


def main(argv: list[str] | None = None) -> int:
    return job_main(lambda: nightly_refresh(argv), job=JOB)


if __name__ == "__main__":
    sys.exit(main())
