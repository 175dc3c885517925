"""The `chatrec` command. The only place errors become messages and exit codes.

Exit codes: 0 ok, 1 internal error (a bug: traceback printed), 2 bad configuration,
3 bad input data, 4 output location refused, 5 model not loadable, 6 data fetch failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from chatrec.entrypoint import configure_logging, run_command
from chatrec.errors import ConfigError

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


def cmd_split(args: argparse.Namespace) -> int:
    from chatrec.evaluation.splits import (
        SplitSpec,
        check_out_dir,
        parse_ratios,
        print_split_summary,
        read_log,
        split_log,
        write_split,
    )

    # 1. check every argument and the output directory before reading any data
    spec = SplitSpec(
        method=args.by,
        ratios=parse_ratios(args.ratios) if args.ratios is not None else None,
        cutoff=args.cutoff,
        n=args.n,
        cold_items=args.cold_items,
        seed=args.seed,
    )
    check_out_dir(args.out, force=args.force)
    # 2. read and validate the log  3. split  4. publish
    log = read_log(args.interactions, format=args.format)
    split = split_log(log.table, spec)
    manifest = write_split(split, args.out, rejects=log.rejects, inputs=args.interactions, force=args.force)
    print_split_summary(manifest, str(args.out))
    return 0


def _params(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param takes KEY=VALUE, e.g. --param l2=400; got {pair!r}")
        params[key.strip()] = value.strip()
    return params


def cmd_baseline(args: argparse.Namespace) -> int:
    from chatrec.config import TableInput, load_config
    from chatrec.summary import print_baseline_summary
    from pipelines.baseline import run_baseline

    config = load_config(args.config) if args.config else None
    result = run_baseline(
        args.name,
        train=TableInput(path=args.train, format=args.format),
        valid=TableInput(path=args.valid, format=args.format) if args.valid else None,
        output=args.output,
        top_k=args.top_k,
        run_id=args.run_id,
        items=TableInput(path=args.items) if args.items else None,
        config=config,
        params=_params(args.param),
    )
    if args.json:
        print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, "baseline": result.baseline,
                          "params": result.params, "wall_seconds": result.manifest["wall_seconds"]}))
    elif result.baseline == "content":
        from chatrec.summary import print_summary

        print_summary(result.manifest, result.run_dir)
    else:
        print_baseline_summary(result.manifest, result.run_dir)
    return 0


def _table_flag(locations: list[str] | None, fmt: str = "auto"):
    from chatrec.config import TableInput

    return TableInput(path=locations, format=fmt) if locations else None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from chatrec.evaluation.metrics import parse_ks
    from chatrec.evaluation.summary import print_comparison, print_evaluations
    from pipelines.evaluate import compare_runs, display_names, evaluate_runs, write_comparison, write_report

    ks = parse_ks(args.k)
    locations = args.compare or args.run
    results = evaluate_runs(locations, _table_flag(args.test), ks=ks, train=_table_flag(args.train))
    deltas = compare_runs(results, n_bootstrap=args.bootstrap, seed=args.seed) if args.compare else None
    report = args.report
    if report is None and args.compare:
        report = f"{results[1].run.run_dir}/compare-{results[0].run.run_id}.html"
    if report is not None:
        title = "A/B comparison" if args.compare else "Evaluation"
        report = write_report(results, report, title=title, comparison=deltas)
    if deltas is not None:
        write_comparison(results, deltas)
    if args.json:
        print(json.dumps({
            "runs": [{"run_id": r.run.run_id, "name": r.run.name, "run_dir": r.run.run_dir,
                      **r.evaluation.to_dict()} for r in results],
            **({"compare": [d.to_dict() for d in deltas]} if deltas is not None else {}),
            "report": report,
        }))
        return 0
    names = display_names(results)
    print_evaluations(dict(zip(names, (r.evaluation for r in results))))
    if deltas is not None:
        print_comparison((names[0], names[1]), deltas)
    for r in results:
        print(f"evaluation: {r.files[0] if r.files else r.run.run_dir}")
    if report is not None:
        print(f"report: {report}")
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
    run.add_argument(
        "--interactions", nargs="+", metavar="LOC",
        help="interaction log: user_id, item_id, timestamp; several locations are concatenated",
    )
    run.add_argument("--users", help="optional users table: user_id plus attribute columns")
    run.add_argument("--output", "-o", help="output root (runs/<run_id>/ and LATEST are written here)")
    run.add_argument("--top-k", type=int, help="items per user (default 20)")
    run.add_argument("--run-id", help="run id (default: UTC timestamp + random suffix)")
    run.add_argument("--model", help="encoder: Hugging Face id, local directory or URI")
    run.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    run.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    run.set_defaults(func=cmd_run)

    split = sub.add_parser(
        "split",
        help="split an interaction log into train / valid / test for offline evaluation",
        description="Split an interaction log into train.parquet, valid.parquet and test.parquet, with "
        "rejected rows in rejects.parquet and a split.json manifest. Chronological order is "
        "(timestamp, item_id, row order), so every split is deterministic.",
        epilog="examples: chatrec split --interactions ml-100k.inter --out splits/ut --by user-time; "
        "chatrec split --interactions log.parquet --out splits/g --by global-time --cutoff 2020-01-01",
    )
    split.add_argument(
        "--interactions", nargs="+", metavar="LOC", required=True,
        help="interaction log: user_id, item_id, timestamp (+ any extra columns, kept); file, "
        "directory, glob or URI; several locations are concatenated",
    )
    split.add_argument(
        "--out", required=True, metavar="DIR",
        help="local output directory; must not exist or be empty (see --force); written to a hidden "
        "sibling first and renamed into place",
    )
    split.add_argument(
        "--by", required=True, choices=["user-time", "global-time", "leave-last"],
        help="user-time: per user, earliest rows train, latest test, by --ratios; "
        "global-time: one timeline, train before --cutoff (or a cut point from --ratios); "
        "leave-last: per user, last --n rows test, the --n before them valid",
    )
    split.add_argument(
        "--ratios", metavar="TRAIN,VALID,TEST",
        help="shares for user-time and global-time, summing to 1 (default 0.8,0.1,0.1)",
    )
    split.add_argument(
        "--cutoff", metavar="TS",
        help="global-time only: train is timestamp < TS, test the rest, valid empty; "
        "TS is seconds since the epoch or ISO-8601 (UTC unless it names a zone)",
    )
    split.add_argument(
        "--n", type=int, metavar="N",
        help="leave-last only: rows per user for test and for valid (default 1)",
    )
    split.add_argument(
        "--cold-items", type=float, default=0.0, metavar="F",
        help="after splitting, move every row of a random fraction F (0 <= F < 1) of the items to "
        "test; their ids go to cold_items.parquet (default 0: none)",
    )
    split.add_argument("--seed", type=int, default=0, help="random seed for --cold-items (default 0)")
    split.add_argument(
        "--format", choices=["auto", "parquet", "csv", "recbole"], default="auto",
        help="input format; auto picks by extension (.parquet, .csv/.tsv, RecBole .inter)",
    )
    split.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    split.set_defaults(func=cmd_split)

    evaluate = sub.add_parser(
        "evaluate",
        help="score published runs against a held-out test log; compare two runs (A/B)",
        description="Score runs (chatrec's or a baseline's) against a test log: Recall, NDCG, MRR, Hit and "
        "Precision at each K (full ranking, training items excluded, RecBole's definitions), coverage, "
        "popularity bias, cold-start and history-length slices. Writes evaluation.json and "
        "evaluation.html into each run directory. With --compare, also a paired A/B test.",
        epilog="examples: chatrec evaluate --run out/demo/chatrec out/demo/ease --test split/test.parquet; "
        "chatrec evaluate --compare out/demo/ease out/demo/chatrec --test split/test.parquet",
    )
    target = evaluate.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--run", nargs="+", metavar="RUN",
        help="output root (LATEST is followed) or run directory; several runs are shown in one table",
    )
    target.add_argument(
        "--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
        help="compare B against A per test user: deltas, bootstrap interval, paired t-test",
    )
    evaluate.add_argument("--test", nargs="+", required=True, metavar="LOC", help="test log: user_id, item_id, timestamp")
    evaluate.add_argument(
        "--train", nargs="+", metavar="LOC",
        help="the interactions the runs were given (their items are excluded from the test positives and "
        "define cold items); default: what each run's manifest records",
    )
    evaluate.add_argument("--k", default="5,10,20", help="cut-offs, comma-separated (default 5,10,20)")
    evaluate.add_argument(
        "--report", metavar="FILE",
        help="also write one HTML report over all runs here (--compare writes one into B's run directory by default)",
    )
    evaluate.add_argument(
        "--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples for --compare (default 2000)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    evaluate.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of tables")
    evaluate.set_defaults(func=cmd_evaluate)

    baseline = sub.add_parser(
        "baseline",
        help="run a classic recommender and publish it in the same layout as `chatrec run`",
        description="Fit a baseline on --train, tune its parameters on --valid (NDCG@10), refit on train + valid "
        "and publish every user's top-K (seen items excluded, a reason per item) exactly like `chatrec run`, "
        "so `chatrec evaluate` compares them on equal footing. popularity: distinct users per item. "
        "itemknn: cosine item-item co-occurrence (tuned: neighbors). ease: EASE closed form (tuned: l2). "
        "ease-recency: EASE scored from a recency-weighted history, weight exp(-age/tau) with age counted "
        "in the user's own interactions (tuned: l2, tau). content: chatrec's zero-shot text-encoder "
        "pipeline on the same interactions (needs --config or --items).",
        epilog="example: chatrec baseline ease-recency --train split/train.parquet --valid split/valid.parquet "
        "--output out/baselines/ease-recency",
    )
    baseline.add_argument("name", choices=["popularity", "itemknn", "ease", "ease-recency", "content"])
    baseline.add_argument("--train", nargs="+", required=True, metavar="LOC", help="training interactions")
    baseline.add_argument(
        "--valid", nargs="+", metavar="LOC",
        help="validation interactions: parameters are tuned on them, then the model is refit on train + valid",
    )
    baseline.add_argument("--output", "-o", required=True, help="output root (runs/<run_id>/ and LATEST)")
    baseline.add_argument("--top-k", type=int, default=20, help="items per user (default 20)")
    baseline.add_argument("--run-id", help="run id (default: UTC timestamp + random suffix)")
    baseline.add_argument("--items", help="items table: titles for the reasons (content: the catalogue to encode)")
    baseline.add_argument(
        "--config", "-c",
        help="a chatrec YAML config: its items table (with format and rename) and, for content, encoder settings",
    )
    baseline.add_argument(
        "--param", action="append", metavar="KEY=VALUE",
        help="fix a parameter instead of tuning it, e.g. --param l2=400 --param tau=20 (repeatable)",
    )
    baseline.add_argument(
        "--format", choices=["auto", "parquet", "csv", "recbole"], default="auto",
        help="format of --train and --valid (auto: by extension)",
    )
    baseline.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    baseline.set_defaults(func=cmd_baseline)

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
    configure_logging(args.verbose)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
