"""The `chatrec` command. The only place errors become messages and exit codes.

Exit codes: 0 ok, 1 internal error (a bug: traceback printed), 2 bad configuration,
3 bad input data, 4 output location refused, 5 model not loadable, 6 data fetch failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from chatrec.errors import ChatrecError

DEFAULT_DATA_HOME = Path("~/.cache/chatrec/datasets").expanduser()


def _run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags in the config file's shape; only the flags given."""
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(section, {})[key] = value

    # A path flag replaces the path only: the file's format and rename for that table stay.
    for table in ("items", "interactions", "users"):
        value = getattr(args, table)
        if value is not None:
            overrides.setdefault("inputs", {})[table] = {"path": value}
    put("output", "path", args.output)
    put("output", "run_id", args.run_id)
    put("retrieval", "top_k", args.top_k)
    put("encoder", "model", args.model)
    put("ray", "address", args.ray_address)
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    from chatrec.config import load_config
    from chatrec.summary import print_summary
    from pipelines.full_run import run_job

    cfg = load_config(args.config, _run_overrides(args))
    result = run_job(cfg)
    if args.json:
        print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, **{
            k: result.manifest[k] for k in ("users", "outputs", "rejects", "stages", "wall_seconds")
        }}))
    else:
        print_summary(result.manifest, result.run_dir)
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from chatrec.datasets.movielens import fetch_movielens_100k

    dest = Path(args.dest) if args.dest else DEFAULT_DATA_HOME / "ml-100k"
    path = fetch_movielens_100k(dest, source=Path(args.source) if args.source else None, force=args.force)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatrec",
        description="Batch recommendations: transformer embeddings on Ray Data, FAISS top-K with "
        "reasons, published atomically as Parquet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the full job: validate, embed, top-K, explain, publish",
        description="Run the full job. Give a YAML config, or the inputs as flags; flags override the file. "
        "Without RAY_ADDRESS (or --ray-address) a local Ray is started.",
        epilog="example: chatrec run --items items.parquet --interactions log.parquet --output out --top-k 20",
    )
    run.add_argument("--config", "-c", help="YAML config file (see README, 'Configuration')")
    run.add_argument("--items", help="items table: file, directory, glob or URI (Parquet, CSV, RecBole .item)")
    run.add_argument("--interactions", help="interaction log: user_id, item_id, timestamp")
    run.add_argument("--users", help="optional users table: user_id plus attribute columns")
    run.add_argument("--output", "-o", help="output root (runs/<run_id>/ and LATEST are written here)")
    run.add_argument("--top-k", type=int, help="items per user (default 20)")
    run.add_argument("--run-id", help="run id (default: UTC timestamp + random suffix)")
    run.add_argument("--model", help="encoder: Hugging Face id, local directory or URI")
    run.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    run.set_defaults(func=cmd_run)

    data = sub.add_parser("data", help="fetch demo data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_sub.add_parser(
        "fetch",
        help="fetch a data set",
        description="Fetch MovieLens-100K as RecBole atomic files: from the recbole==1.2.1 wheel "
        "(data files only), or converted from a GroupLens directory (u.data, u.item, u.user) with --from.",
    )
    fetch.add_argument("dataset", choices=["movielens-100k"])
    fetch.add_argument("--dest", help=f"target directory (default {DEFAULT_DATA_HOME}/ml-100k)")
    fetch.add_argument("--from", dest="source", help="a local directory with GroupLens or atomic files")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.set_defaults(func=cmd_data_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing chatter
    try:
        return args.func(args)
    except ChatrecError as e:
        print(f"chatrec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("chatrec: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as e:
        # Errors raised inside Ray workers arrive wrapped; report the chatrec error within.
        cause = _chatrec_cause(e)
        if cause is None:
            raise
        print(f"chatrec: error: {cause}", file=sys.stderr)
        return cause.exit_code


def _chatrec_cause(error: BaseException) -> ChatrecError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ChatrecError):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
