"""`python -m bench`: run every section on one local Ray, write results.json and BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import machine
from bench.context import Context, Sizes, ray_started
from bench.measure import MemorySampler
from bench.report import render, write_section

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("growth", "job", "embedding", "topk", "parquet", "gpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark chatrec's stages against their bare kernels on synthetic data: the embedding "
        "stage against a plain loop of the same encoder and SentenceTransformer.encode; the top-K stage against "
        "faiss IndexFlatIP.search, with IVF and HNSW recall; Parquet output; peak memory and how each stage's "
        "time grows with 10x the items or users; the whole job's stage shares; the GPU path where there is a "
        "GPU. Stages and kernels run interleaved, several times; ratios are taken within the run. Writes the "
        "figures as JSON and rewrites the generated section of BENCHMARKS.md.",
        epilog="examples: python -m bench (9 minutes on 2 idle cores, 13-20 under load); python -m bench --quick (tiny sizes, "
        "a few minutes, BENCHMARKS.md untouched); python -m bench --scale 10",
    )
    parser.add_argument("--scale", type=int, default=1, metavar="N",
                        help="multiply every workload by N (default 1: the sizes in bench/context.py)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes to check the harness; writes bench/results-quick.json, not BENCHMARKS.md")
    parser.add_argument("--out", type=Path, metavar="JSON",
                        help="where the figures go (default bench/results.json; with --quick bench/results-quick.json)")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="the Markdown file whose generated section is rewritten (default BENCHMARKS.md; "
                        "with --quick none)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}); parquet needs topk")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the Markdown section from an earlier results file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default 0)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory (data, runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per dataset drowns the figures
    markdown = args.markdown or (None if args.quick else ROOT / "BENCHMARKS.md")
    if args.render is not None:
        results = json.loads(args.render.read_text())
        return _write_markdown(markdown or ROOT / "BENCHMARKS.md", results)
    if args.scale < 1:
        print(f"python -m bench: --scale must be at least 1, got {args.scale}", file=sys.stderr)
        return 2
    sizes = (Sizes.quick() if args.quick else Sizes()).scaled(args.scale)
    out = args.out or ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    results = run(sizes, sections=args.only or SECTIONS, seed=args.seed, keep_work=args.keep_work,
                  args=" ".join(["", *(argv if argv is not None else sys.argv[1:])]).rstrip())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    logger.info("figures: %s", out)
    if markdown is not None:
        return _write_markdown(markdown, results)
    return 0


def _write_markdown(markdown: Path, results: dict) -> int:
    try:
        write_section(markdown, render(results))
    except ValueError as e:
        print(f"python -m bench: {e}", file=sys.stderr)
        return 1
    logger.info("section rewritten in %s", markdown)
    return 0


def run(sizes: Sizes, *, sections=SECTIONS, seed: int = 0, keep_work: bool = False, args: str = "") -> dict:
    """Every requested section, in an order where each finds what it needs; returns the figures."""
    started = time.perf_counter()
    description = machine.describe()
    logger.info("machine: %s", machine.one_line(description))
    ray_started(os.cpu_count())
    work = Path(tempfile.mkdtemp(prefix="chatrec-bench-"))
    results: dict = {"machine": description, "sizes": sizes.__dict__, "args": args, "sections": {}}
    try:
        with MemorySampler() as sampler:
            ctx = Context(sizes=sizes, work=work, sampler=sampler, seed=seed)
            results["sections"] = _sections(ctx, sections)
    finally:
        if keep_work:
            logger.info("scratch kept at %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def _sections(ctx: Context, wanted) -> dict:
    from bench import embedding, gpu, parquet_out, scaling, topk

    done: dict = {}

    def section(name: str, fn):
        logger.info("== %s", name)
        start = time.perf_counter()
        value = fn()
        logger.info("== %s done in %.0f s", name, time.perf_counter() - start)
        return value

    # The whole-job runs first, so the driver's RSS in them is the job's, not the models and
    # vectors the later sections hold.
    if "growth" in wanted:
        done["growth"] = section("growth", lambda: scaling.growth(ctx))
    if "job" in wanted:
        done["job"] = section("job", lambda: scaling.whole_job(ctx))
    if "embedding" in wanted:
        done["embedding"] = section("embedding", lambda: embedding.run(ctx))
    recommendations = None
    if "topk" in wanted or "parquet" in wanted:
        done["topk"], recommendations = section("topk", lambda: topk.run(ctx))
    if "parquet" in wanted:
        embeddings = done["job"]["run_dir"] + "/item_embeddings" if "job" in done else None
        done["parquet"] = section("parquet", lambda: parquet_out.run(
            ctx, recommendations, done["topk"]["users"], done["topk"].pop("stage_output_dir"), embeddings))
    else:
        done.get("topk", {}).pop("stage_output_dir", None)
    if "gpu" in wanted:
        done["gpu"] = section("gpu", lambda: gpu.run(ctx))
    return done
