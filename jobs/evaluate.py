"""Score published runs against a held-out test log; with --baseline, an A/B comparison.

    python -m jobs.evaluate --config CONFIG.yaml --test LOC [LOC ...] [--baseline RUN]
    python -m jobs.evaluate --run RUN [RUN ...] --test LOC [LOC ...]
        [--train LOC ...] [--k 5,10,20] [--report FILE] [--bootstrap N] [--seed S] [-v]

`--config` evaluates the run that the config's output LATEST points to: the run the
full job or the nightly refresh just published. RUN is an output root (LATEST is
followed) or a run directory, local or a URI. Runs' tables are never modified; each run
gets evaluation.json and evaluation.html.

    1. arguments and logging
    2. the runs: --run, or the config's latest run; --baseline goes first, as A
    3. scores per run (pipelines.evaluate.evaluate_runs)
    4. with --baseline: B against A per user (compare_runs), compare-<A>.json into B's run
    5. the report, and the summary
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chatrec.entrypoint import JobArgumentParser, configure_logging, job_main
from chatrec.errors import ConfigError
from chatrec.evaluation.metrics import parse_ks

JOB = "jobs.evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = JobArgumentParser(
        prog=f"python -m {JOB}",
        description=__doc__.split("\n\n")[0],
        epilog="The last line of stdout is a JSON summary (primary metric per run, deltas for --baseline).",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", "-c", help="chatrec YAML config: evaluate the run its output LATEST points to")
    target.add_argument("--run", nargs="+", metavar="RUN", help="output roots (LATEST is followed) or run directories")
    parser.add_argument("--test", nargs="+", required=True, metavar="LOC", help="test log: user_id, item_id, timestamp")
    parser.add_argument(
        "--train", nargs="+", metavar="LOC",
        help="the interactions the runs were given (default: what each run's manifest records)",
    )
    parser.add_argument("--baseline", metavar="RUN", help="A/B: compare the evaluated run (B) against this run (A)")
    parser.add_argument("--k", default="5,10,20", help="cut-offs, comma-separated (default 5,10,20)")
    parser.add_argument(
        "--report", metavar="FILE",
        help="HTML report over all runs (default with --baseline: compare-<A>.html in B's run directory)",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def target_runs(args: argparse.Namespace) -> list[str]:
    """Where the runs are; with --baseline, A first."""
    if args.config is not None:
        from chatrec.config import load_config

        runs = [load_config(args.config).output.path]
    else:
        runs = list(args.run)
    if args.baseline is not None:
        if len(runs) != 1:
            raise ConfigError(f"--baseline compares one run against it; got {len(runs)} runs: {runs}")
        runs = [args.baseline, *runs]
    return runs


def evaluate(argv: list[str] | None = None) -> dict[str, Any]:
    # 1. arguments and logging
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    from chatrec.config import TableInput
    from pipelines.evaluate import compare_runs, evaluate_runs, write_comparison, write_report

    # 2. runs
    ks = parse_ks(args.k)
    locations = target_runs(args)
    # 3. scores
    results = evaluate_runs(
        locations, TableInput(path=args.test), ks=ks, train=TableInput(path=args.train) if args.train else None
    )
    # 4. A/B
    deltas = compare_runs(results, n_bootstrap=args.bootstrap, seed=args.seed) if args.baseline else None
    if deltas is not None:
        write_comparison(results, deltas)
    # 5. report and summary
    report = args.report
    if report is None and deltas is not None:
        report = f"{results[1].run.run_dir}/compare-{results[0].run.run_id}.html"
    if report is not None:
        report = write_report(results, report, title="A/B comparison" if deltas else "Evaluation", comparison=deltas)
    return {
        "runs": [
            {"run_id": r.run.run_id, "name": r.run.name, "run_dir": r.run.run_dir,
             **{k: v for k, v in r.evaluation.to_dict().items() if k != "slices"},
             "files": r.files}
            for r in results
        ],
        **({"compare": [d.to_dict() for d in deltas]} if deltas is not None else {}),
        "report": report,
    }


def main(argv: list[str] | None = None) -> int:
    return job_main(lambda: evaluate(argv), job=JOB)


if __name__ == "__main__":
    sys.exit(main())
