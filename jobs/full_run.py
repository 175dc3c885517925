"""The full job: read and validate the inputs, embed, take each user's top-K with reasons,
and publish the run (LATEST last).

    python -m jobs.full_run --config CONFIG.yaml [--run-id ID] [--output LOC] [-v]

    1. arguments and logging
    2. the config: the file, then the flags over it (unknown keys are errors)
    3. the pipeline (pipelines.full_run.run_job), which publishes the run
    4. the summary: what was published, and where LATEST points now
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from chatrec.entrypoint import JobArgumentParser, configure_logging, job_main

if TYPE_CHECKING:
    from pipelines.full_run import RunResult

JOB = "jobs.full_run"


def build_parser(
    prog: str = JOB, *, description: str | None = None, default_run_id: str = "UTC timestamp + random suffix"
) -> argparse.ArgumentParser:
    parser = JobArgumentParser(
        prog=f"python -m {prog}",
        description=description or __doc__.split("\n\n")[0],
        epilog="The last line of stdout is a JSON summary; exit codes as for `chatrec` "
        "(2 config, 3 input data, 4 run id already published, 5 model).",
    )
    parser.add_argument("--config", "-c", required=True, help="YAML config (see docs/configuration.md)")
    parser.add_argument("--run-id", help=f"run id (default: {default_run_id})")
    parser.add_argument("--output", "-o", help="output root, overriding output.path (a path or URI)")
    parser.add_argument("--keep", type=int, metavar="N",
                        help="after publishing, delete all but the newest N runs (never the one LATEST names)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given, in the config file's shape."""
    output = {k: v for k, v in (("path", args.output), ("run_id", args.run_id), ("keep", args.keep)) if v is not None}
    return {"output": output} if output else {}


def run_summary(result: RunResult, output_root: str) -> dict[str, Any]:
    """What a scheduler needs from a published run, taken from its manifest."""
    from chatrec.publish import read_latest

    manifest = result.manifest
    return {
        "run_id": result.run_id,
        "run_dir": result.run_dir,
        "latest": read_latest(output_root),
        "users": manifest["users"],
        "outputs": manifest["outputs"],
        "rejects": manifest["rejects"]["total"],
        "cluster": manifest["cluster"],
        "stages": [{k: s[k] for k in ("name", "rows", "seconds")} for s in manifest["stages"]],
        "wall_seconds": manifest["wall_seconds"],
        **{k: manifest[k] for k in ("refresh", "resumed_stages", "retention") if k in manifest},
    }


def full_run(argv: list[str] | None = None) -> dict[str, Any]:
    # 1. arguments and logging
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    # The pipeline's imports (torch, Ray) wait until the arguments are known to be good.
    from chatrec.config import load_config
    from pipelines.full_run import run_job as run_pipeline

    # 2. config
    cfg = load_config(args.config, overrides(args))
    # 3. pipeline
    result = run_pipeline(cfg)
    # 4. summary
    return run_summary(result, cfg.output.path)


def main(argv: list[str] | None = None) -> int:
    return job_main(lambda: full_run(argv), job=JOB)


if __name__ == "__main__":
    sys.exit(main())
