"""The `chatrec` command. The only place errors become messages and exit codes.

Exit codes: 0 ok, 1 internal error (a bug: traceback printed), 2 bad configuration,
3 bad input data, 4 output location refused, 5 model not loadable, 6 data fetch failed,
7 Ray could not be started or joined,
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
# Data sets converted from local files; without --from, their copy beside the repository.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data2"
LOCAL_DATASETS = {"amazon-scientific": "amazon_scientific", "microlens-50k": "microlens50k"}


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
    put("output", "keep", args.keep)
    put("retrieval", "top_k", args.top_k)
    put("encoder", "model", args.model)
    put("ray", "address", args.ray_address)
    # `run` only: `refresh` takes the feedback log and the rerank settings from its config.
    if getattr(args, "feedback", None) is not None:
        overrides.setdefault("inputs", {})["feedback"] = {"path": args.feedback}
    put("rerank", "enabled", True if getattr(args, "rerank", False) else None)
    put("rerank", "model", getattr(args, "llm_model", None))
    put("rerank", "users", getattr(args, "llm_users", None))
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    from chatrec.config import load_config
    from chatrec.summary import print_matcher_summary, print_summary
    from pipelines.full_run import run_job

    refresh, train = args.command == "refresh", args.command == "train"
    for flag in ("items", "interactions", "users", "top_k", "model", "keep"):
        if not hasattr(args, flag):  # flags `run` has and `refresh`/`train` do not
            setattr(args, flag, None)
    cfg = load_config(args.config, _run_overrides(args))
    result = run_job(cfg, refresh=refresh, train_only=train)
    if train:
        if args.json:
            print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, "matcher": {
                k: result.manifest["matcher"].get(k) for k in ("best_epoch", "epochs_run", "validation", "fusion")
            }, "stages": result.manifest["stages"], "wall_seconds": result.manifest["wall_seconds"]}))
        else:
            print_matcher_summary(result.manifest, result.run_dir)
        return 0
    if args.json:
        print(json.dumps({"run_id": result.run_id, "run_dir": result.run_dir, **{
            k: result.manifest[k] for k in ("users", "outputs", "rejects", "stages", "wall_seconds",
                                            "refresh", "rerank", "resumed_stages", "retention") if k in result.manifest
        }}))
    else:
        print_summary(result.manifest, result.run_dir)
    return 0


def cmd_models_tiny_lm(args: argparse.Namespace) -> int:
    from chatrec.rerank.tiny_lm import write_tiny_causal_lm

    print(write_tiny_causal_lm(Path(args.dest), seed=args.seed))
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    if args.dataset == "movielens-100k":
        from chatrec.datasets.movielens import fetch_movielens_100k

        dest = Path(args.dest) if args.dest else DEFAULT_DATA_HOME / "ml-100k"
        path = fetch_movielens_100k(dest, source=Path(args.source) if args.source else None, force=args.force)
        print(path)
        return 0
    return _fetch_ordered(args)


def _fetch_ordered(args: argparse.Namespace) -> int:
    """The data sets converted from local files that give per-user order but no times."""
    from chatrec.datasets.amazon_scientific import fetch_amazon_scientific
    from chatrec.datasets.microlens import fetch_microlens_50k
    from chatrec.datasets.ordered_log import read_manifest

    fetch = {"amazon-scientific": fetch_amazon_scientific, "microlens-50k": fetch_microlens_50k}[args.dataset]
    source = Path(args.source) if args.source else SHARED_DATA / LOCAL_DATASETS[args.dataset]
    dest = Path(args.dest) if args.dest else DEFAULT_DATA_HOME / args.dataset
    path = fetch(dest, source=source, force=args.force)
    counts = read_manifest(path)["counts"]
    print(path)
    print(f"{counts['users']:,} users, {counts['items']:,} items, {counts['interactions']:,} interactions; "
          f"the timestamps are synthetic, only each user's order is real (see {path / 'README.md'})")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from chatrec.datasets.synth import DEFAULT_CHUNK_ROWS, SynthSpec, synthesize

    spec = SynthSpec(items=args.items, users=args.users, seed=args.seed, clusters=args.clusters,
                     chunk_rows=args.chunk_rows or DEFAULT_CHUNK_ROWS)
    manifest = synthesize(args.out, spec, force=args.force)
    rows, stats = manifest["rows"], manifest["stats"]
    print(f"{rows['items']:,} items in {manifest['clusters']} taste clusters, {rows['users']:,} users, "
          f"{rows['interactions']:,} interactions (median {stats['history_median']} a user, "
          f"top 1% of items {stats['top_1pct_item_share']:.0%} of them)")
    print(f"run it: chatrec run --items {args.out}/items --interactions {args.out}/interactions --output OUT")
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


def _job_flags(parser: argparse.ArgumentParser, *, output_help: str) -> None:
    """The flags `refresh` and `train` share: their inputs come from the config."""
    parser.add_argument("--config", "-c", required=True, help="YAML config file (see docs/configuration.md)")
    parser.add_argument("--output", "-o", help=output_help)
    parser.add_argument("--run-id", help="run id (default: UTC timestamp + random suffix)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    parser.set_defaults(func=cmd_run)


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
    run.add_argument("--config", "-c", help="YAML config file (see docs/configuration.md)")
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
    run.add_argument(
        "--feedback", nargs="+", metavar="LOC",
        help="feedback log: user_id, item_id, timestamp, event (impression, click, dismiss); clicks become "
        "interactions, recent dismissals are left out (see docs/feedback.md)",
    )
    run.add_argument(
        "--rerank", action="store_true",
        help="run the LLM rerank stage: a language model reorders each user's top-N candidates and explains "
        "them (needs --llm-model or rerank.model; see docs/rerank.md)",
    )
    run.add_argument("--llm-model", metavar="MODEL",
                     help="rerank model: a Hugging Face causal LM id, local directory, URI or .gguf file, or "
                     "smollm2-135m-instruct (packaged, offline, CPU: the demo's)")
    run.add_argument(
        "--llm-users", metavar="WHO",
        help="who is reranked: all, a share (0.1), a count (500) or segment:NAME=VALUE (default all); the "
        "others keep the top-K order",
    )
    run.add_argument("--json", action="store_true", help="print a JSON summary instead of tables")
    run.add_argument("--keep", type=int, metavar="N",
                     help="after publishing, delete all but the newest N runs (never the one LATEST names)")
    run.set_defaults(func=cmd_run)

    refresh = sub.add_parser(
        "refresh",
        help="the nightly refresh: rerun on today's catalogue and log, reusing the last run's work",
        description="Run the job again on the current inputs, building on the run LATEST names: only items "
        "whose text changed (or that are new) are embedded, the matcher is reused unless refresh.retrain says "
        "to train again, users whose history did not change keep their vectors, and top-K is recomputed for "
        "every user. The manifest counts what was added, changed, removed, reused and recomputed. Re-running "
        "the same --run-id after a crash resumes it.",
        epilog="example: chatrec refresh --config nightly.yaml --run-id nightly-2026-11-23 --keep 7",
    )
    _job_flags(refresh, output_help="output root, overriding output.path")
    refresh.add_argument("--keep", type=int, metavar="N",
                         help="after publishing, delete all but the newest N runs (never the one LATEST names)")

    train = sub.add_parser(
        "train",
        help="train the matcher alone and publish it, for runs to score with (matcher.from_run)",
        description="Run the matcher's stages alone: read and validate the inputs, embed the items (the "
        "embedding cache serves unchanged texts), train the two-tower matcher with Ray Train and tune its "
        "fusion. The result is published under <output>/matchers/runs/<run_id>/ (item_embeddings/, "
        "matcher/model.pt, matcher/item_vectors.parquet, manifest.json) with <output>/matchers/LATEST; no "
        "recommendations are made. A run with matcher.from_run: <output>/matchers scores with it instead of "
        "training. Re-running the same --run-id after a crash resumes the training.",
        epilog="example: chatrec train --config configs/movielens-100k.yaml --run-id weekly-2026-47",
    )
    _job_flags(train, output_help="output root, overriding output.path (the matcher goes to <output>/matchers)")
    train.add_argument("--interactions", nargs="+", metavar="LOC", help="interaction log, overriding the config's")

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
        "in the user's own interactions (tuned: l2, tau). lowrank-recency: EASE's low-rank relative, its "
        "top `rank` directions of the co-occurrences shrunk by l2, scored from the same recency-weighted "
        "history; it holds (items x rank) numbers, so it fits any catalogue (tuned: rank, l2, tau). sasrec: SASRec, "
        "the next-item transformer over item ids, full-softmax cross-entropy, trained on train with early stopping "
        "on valid, then refit on train + valid for the chosen epochs (tuned: epochs; --param epochs=N skips "
        "validation; other --param values shape the training it stops). content: chatrec's zero-shot text-encoder "
        "pipeline on the same interactions (needs --config or --items).",
        epilog="example: chatrec baseline ease-recency --train split/train.parquet --valid split/valid.parquet "
        "--output out/baselines/ease-recency",
    )
    baseline.add_argument("name", choices=["popularity", "itemknn", "ease", "ease-recency", "lowrank-recency", "sasrec",
                                          "content"])
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

    models = sub.add_parser("models", help="write models for trying chatrec offline")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    tiny = models_sub.add_parser(
        "tiny-lm",
        help="write a tiny causal LM with random weights (for fast tests of the rerank stage)",
        description="Write a 2-layer LLaMA-architecture causal LM with random weights and a byte-level BPE "
        "tokenizer, built here with no download (about 0.6 MB). It exercises the rerank stage's mechanics in "
        "seconds; its answers are noise, so almost every user falls back to the top-K order. For a real model "
        "offline, use --llm-model smollm2-135m-instruct.",
        epilog="example: chatrec models tiny-lm --dest out/tiny-lm && chatrec run ... --rerank --llm-model out/tiny-lm",
    )
    tiny.add_argument("--dest", required=True, help="directory to write the model to")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.set_defaults(func=cmd_models_tiny_lm)

    data = sub.add_parser("data", help="fetch demo data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_sub.add_parser(
        "fetch",
        help="fetch a data set",
        description="Fetch MovieLens-100K as RecBole atomic files: from the recbole==1.2.1 wheel "
        "(data files only), or converted from a GroupLens directory (u.data, u.item, u.user) with --from. "
        "Convert Amazon Scientific (the Scientific.* files of CoWPiRec's RecBole layout) or MicroLens-50K "
        "(MicroLens-50k_pairs.tsv, MicroLens-50k_titles.csv) from a local directory into items.parquet and "
        "interactions.parquet; their timestamps are synthetic (a user's k-th interaction on day k), only "
        "each user's order is real.",
        epilog="examples: chatrec data fetch movielens-100k; "
        "chatrec data fetch amazon-scientific --from ../shared/data2/amazon_scientific --dest data/amazon-scientific",
    )
    fetch.add_argument("dataset", choices=["movielens-100k", *LOCAL_DATASETS])
    fetch.add_argument("--dest", help=f"target directory (default {DEFAULT_DATA_HOME}/ml-100k, "
                       f"{DEFAULT_DATA_HOME}/amazon-scientific, ...)")
    fetch.add_argument("--from", "--source", dest="source",
                       help="a local directory: GroupLens or atomic files for movielens-100k; the source files for "
                       f"the others (default for those: {SHARED_DATA}/<amazon_scientific|microlens50k>)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.set_defaults(func=cmd_data_fetch)
    synth = data_sub.add_parser(
        "synth",
        help="generate a synthetic catalogue and interaction log of any size",
        description="Generate a synthetic catalogue (titles, categories, descriptions of varied length, "
        "brand/price/language attributes) and an interaction log with timestamps, in chatrec's input "
        "contract. Items belong to hidden taste clusters with their own words; each user favours one to "
        "three clusters; item popularity and user activity follow power laws. The same seed gives the same "
        "rows however they are cut into files, and users are generated and written a block at a time, so "
        "10M users fit in bounded memory. Writes DIR/items/, DIR/interactions/ (Parquet parts) and "
        "DIR/synth.json.",
        epilog="example: chatrec data synth --items 10000 --users 100000 --out data/synth-10k",
    )
    synth.add_argument("--items", type=int, required=True, metavar="N", help="catalogue size")
    synth.add_argument("--users", type=int, required=True, metavar="M", help="users in the log (each has >= 3 interactions)")
    synth.add_argument("--out", required=True, metavar="DIR",
                       help="local output directory; must not exist or be empty (see --force)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--clusters", type=int, metavar="K",
                       help="taste clusters (default: about sqrt(items) / 2, between 4 and 64)")
    synth.add_argument("--chunk-rows", type=int, metavar="R",
                       help="rows per Parquet part file (default 1,000,000)")
    synth.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    synth.set_defaults(func=cmd_data_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
