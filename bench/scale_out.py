"""`python -m bench.scale_out` (`make bench-scale`): the whole job at 10^5-10^6 users.

`chatrec data synth` data sets with --items (default 50,000) and each --users size, run end to
end by `pipelines.full_run.run_job` with the product's default configuration except the
encoder: a tiny BERT (2 layers, hidden 32, random weights) over all-MiniLM-L6-v2's own
tokenizer, built here from a config, so that encoding does not dominate a laptop run.
Series: the matcher off, and (`--matcher`) on with one epoch. Each run is a process of its
own, as a scheduled job is: the driver's peak RSS is then that run's alone, not what an
earlier, larger run left in the same process. The data sets are generated in this process.

Per run and stage: seconds, rows, the driver's peak RSS and the largest Ray worker's. Then
the bounds the scale-out issue sets, each as measured: the driver's peak RSS from the
smallest to the largest size, each stage's growth exponent in users (1.0 = linear), the
top-K stage against a bare `IndexFlatIP.search` of the same vectors in the same process
(matcher off), and the matcher's training examples/s against a 1,682-item catalogue's.
Figures go to bench/scale_results.json and BENCHMARKS.md's scale section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench import machine
from bench.context import Context, Sizes, ray_started
from bench.measure import MemorySampler, StageTagger
from bench.report import write_section

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("<!-- bench-scale:begin -->", "<!-- bench-scale:end -->")
# The matcher's reference catalogue: MovieLens-100K's size.
SMALL_CATALOGUE = 1_682


def tiny_encoder(dest: Path) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and all-MiniLM-L6-v2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from chatrec.config import DEFAULT_MODEL
    from chatrec.model_loading import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(DEFAULT_MODEL))
    tokenizer.save_pretrained(dest)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(dest)
    return dest


def job(ctx: Context, encoder: Path, items: int, users: int, matcher: bool) -> dict:
    """One end-to-end run; its stages, memory and (matcher off) the bare search beside it."""
    from pipelines.full_run import run_job

    sections = {"encoder": {"model": str(encoder)},
                "matcher": {"enabled": True, "max_epochs": 1} if matcher else {"enabled": False}}
    cfg = ctx.config(ctx.dataset(items, users), **sections)
    tagger = StageTagger(ctx.sampler)
    logger.info("== %s items x %s users, matcher %s", f"{items:,}", f"{users:,}", "on" if matcher else "off")
    with ctx.sampler.window() as memory, tagger.attached():
        result = run_job(cfg)
    manifest = result.manifest
    peaks = memory.to_dict()
    by_stage = peaks["by_stage"]
    row = {
        "items": items, "users": users, "matcher": matcher,
        "interactions": manifest["inputs"]["interactions"]["valid"],
        "wall_s": manifest["wall_seconds"],
        "driver_peak_mib": peaks["driver_mib"], "worker_max_mib": peaks["worker_max_mib"],
        "stages": {s["name"]: {"seconds": s["seconds"], "rows": s["rows"], "unit": s["unit"],
                               "driver_mib": by_stage.get(s["name"], {}).get("driver"),
                               "worker_max_mib": by_stage.get(s["name"], {}).get("worker_max")}
                   for s in manifest["stages"]},
        "fusion": (manifest.get("matcher") or {}).get("fusion"),
        "new_item_slots": manifest["new_item_slots"],
    }
    if not matcher:
        row["bare_search_s"] = bare_search_seconds(result.run_dir, manifest["top_k"])
    shutil.rmtree(cfg.output.path, ignore_errors=True)  # the next size needs the disk more
    return row


def job_in_process(work: Path, encoder: Path, items: int, users: int, matcher: bool) -> dict:
    """`job` in a child process (its data set generated here first); -> its row."""
    Context(sizes=Sizes(), work=work, sampler=None).dataset(items, users)
    row_path = work / f"row-{items}x{users}-{int(matcher)}.json"
    spec = dict(work=str(work), encoder=str(encoder), items=items, users=users, matcher=matcher, row=str(row_path))
    subprocess.run([sys.executable, "-m", "bench.scale_out", "--one-job", json.dumps(spec)], check=True, cwd=ROOT)
    return json.loads(row_path.read_text())


def one_job(*, work: str, encoder: str, items: int, users: int, matcher: bool, row: str) -> int:
    ray_started(os.cpu_count())
    with MemorySampler() as sampler:
        ctx = Context(sizes=Sizes(), work=Path(work), sampler=sampler)
        Path(row).write_text(json.dumps(job(ctx, Path(encoder), items, users, matcher)))
    return 0


def bare_search_seconds(run_dir: str, k: int) -> float:
    """The top-K kernel alone: IndexFlatIP over the run's item vectors, every user vector
    searched for k, in blocks, with every core. Exclusions and reasons are the stage's work."""
    import faiss
    import pyarrow.dataset as pads

    from chatrec.encoder import fixed_size_list_to_numpy

    items = pads.dataset(os.path.join(run_dir, "item_embeddings")).to_table(columns=["embedding"])
    users = pads.dataset(os.path.join(run_dir, "user_embeddings")).to_table(columns=["embedding"])
    index = faiss.IndexFlatIP(items.schema.field("embedding").type.list_size)
    index.add(np.ascontiguousarray(fixed_size_list_to_numpy(items.column("embedding"))))
    queries = np.ascontiguousarray(fixed_size_list_to_numpy(users.column("embedding")))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    for i in range(0, len(queries), 65_536):
        index.search(queries[i:i + 65_536], k)
    return round(time.perf_counter() - start, 2)


def growth_exponent(small: float, large: float, users_small: int, users_large: int) -> float | None:
    if small <= 0 or large <= 0:
        return None
    return round(math.log(large / small) / math.log(users_large / users_small), 2)


def bounds(series: list[dict]) -> dict:
    """The issue's bounds, as measured on the matcher-off series (and the matcher's rates)."""
    off = sorted((r for r in series if not r["matcher"]), key=lambda r: r["users"])
    out: dict = {}
    if len(off) >= 2:
        first, last = off[0], off[-1]
        out["driver_rss_growth"] = round(last["driver_peak_mib"] / first["driver_peak_mib"], 2)
        out["stage_growth_exponents"] = {
            name: growth_exponent(first["stages"][name]["seconds"], last["stages"][name]["seconds"],
                                  first["users"], last["users"])
            for name in last["stages"] if name in first["stages"]}
    if off:
        last = off[-1]
        topk = last["stages"].get("top-k", {}).get("seconds")
        if topk:
            out["topk_vs_bare_search"] = round(last["bare_search_s"] / topk, 3)
    on = [r for r in series if r["matcher"]]
    rates = {}
    for r in on:
        stage = r["stages"].get("train-matcher")
        if stage and stage["seconds"]:
            rates[f"{r['items']}x{r['users']}"] = round(stage["rows"] / stage["seconds"], 1)
    if rates:
        out["matcher_examples_per_s"] = rates
    return out


def render(results: dict) -> str:
    lines = [MARKERS[0], "",
             f"Generated by `make bench-scale` ({results['args'] or 'defaults'}) on {results['machine_line']}, "
             f"{results['finished_at']}; {results['wall_s'] / 60:.0f} min in all. Encoder: a tiny BERT "
             "(2 layers, hidden 32, random weights, all-MiniLM-L6-v2's tokenizer); everything else at the "
             "product's defaults.", ""]
    for matcher in (False, True):
        rows = [r for r in results["series"] if r["matcher"] == matcher]
        if not rows:
            continue
        stages = list(dict.fromkeys(s for r in rows for s in r["stages"]))
        lines += [f"**Matcher {'on, one epoch' if matcher else 'off'}** (seconds per stage; peak RSS in MiB)", "",
                  "| items × users | interactions | wall s | " + " | ".join(stages) + " | driver peak | largest worker |",
                  "|---|---|---|" + "---|" * len(stages) + "---|---|"]
        for r in rows:
            cells = [f"{r['stages'][s]['seconds']:.1f}" if s in r["stages"] else "–" for s in stages]
            lines.append(f"| {r['items']:,} × {r['users']:,} | {r['interactions']:,} | {r['wall_s']:.0f} | "
                         + " | ".join(cells) + f" | {r['driver_peak_mib']:,.0f} | {r['worker_max_mib']:,.0f} |")
        lines.append("")
    b = results["bounds"]
    lines.append("Against the scale-out bounds:")
    if "driver_rss_growth" in b:
        lines.append(f"- driver peak RSS, largest over smallest size: {b['driver_rss_growth']}× (bound: ≤ 1.2×)")
        worst = max((v for v in b["stage_growth_exponents"].values() if v is not None), default=None)
        grown = ", ".join(f"{k} {v}" for k, v in b["stage_growth_exponents"].items() if v is not None)
        lines.append(f"- growth exponent in users per stage (1 = linear; bound: none above 1): {grown}"
                     + (f"; largest {worst}" if worst is not None else ""))
    if "topk_vs_bare_search" in b:
        lines.append(f"- top-K stage at the largest size against a bare `IndexFlatIP.search` of the same vectors: "
                     f"{b['topk_vs_bare_search']}× (bound: ≥ 0.5×)")
    if "matcher_examples_per_s" in b:
        lines.append("- matcher training examples/s (train-matcher stage, Ray Train start and validation included): "
                     + ", ".join(f"{k}: {v}" for k, v in b["matcher_examples_per_s"].items()))
    lines += ["", MARKERS[1]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.split("\n\n")[1],
                                     epilog="example: python -m bench.scale_out --users 100000 300000 1000000 --matcher")
    parser.add_argument("--items", type=int, default=50_000, help="catalogue size (default 50,000)")
    parser.add_argument("--users", type=int, nargs="+", default=[100_000, 300_000, 1_000_000],
                        help="user counts, one run each (default 100,000 300,000 1,000,000)")
    parser.add_argument("--matcher", action="store_true",
                        help="also the matcher-on series (one epoch), plus a 1,682-item run for its reference rate")
    parser.add_argument("--matcher-users", type=int, nargs="+", metavar="N",
                        help="user counts of the matcher-on series (default: those of --users)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "scale_results.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-markdown", action="store_true", help="leave BENCHMARKS.md as it is")
    parser.add_argument("--one-job", type=json.loads, help=argparse.SUPPRESS)  # a child process's run
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if args.one_job:
        return one_job(**args.one_job)
    started = time.perf_counter()
    description = machine.describe()
    work = Path(tempfile.mkdtemp(prefix="chatrec-bench-scale-"))
    runs = [(args.items, users, False) for users in args.users]
    if args.matcher:
        matcher_users = args.matcher_users or args.users
        runs += [(SMALL_CATALOGUE, matcher_users[0], True)] + [(args.items, u, True) for u in matcher_users]
    try:
        encoder = tiny_encoder(work / "tiny-bert")
        series = [job_in_process(work, encoder, items, users, matcher) for items, users, matcher in runs]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"machine": description, "machine_line": machine.one_line(description),
               "args": " ".join(argv if argv is not None else sys.argv[1:]), "series": series,
               "bounds": bounds(series), "wall_s": round(time.perf_counter() - started, 1),
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    logger.info("figures: %s", args.out)
    if not args.no_markdown:
        write_section(args.markdown, render(results), markers=MARKERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
