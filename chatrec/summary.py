"""The end-of-run summary: stage times and throughput, counts, output location, examples."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from chatrec.catalogue import clip_text


def _stage_table(manifest: dict, title: str) -> Table:
    stages = Table(title=title, title_justify="left")
    for col in ("stage", "seconds", "rows", "rows/s", "detail"):
        stages.add_column(col, justify="right" if col in ("seconds", "rows", "rows/s") else "left")
    for s in manifest["stages"]:
        stages.add_row(s["name"], f"{s['seconds']:.1f}", f"{s['rows']:,} {s['unit']}", f"{s['rows_per_s']:,.0f}", s["detail"])
    stages.add_row("total", f"{manifest['wall_seconds']:.1f}", "", "", "")
    return stages


def print_matcher_summary(manifest: dict, run_dir: str, console: Console | None = None) -> None:
    """`chatrec train`: stage times, the trained matcher's validation and fusion, where it went."""
    console = console or Console(markup=False)  # names and reasons come from user data
    console.print(_stage_table(manifest, f"chatrec train {manifest['run_id']}"))
    matcher = manifest["matcher"]
    counts = Table(show_header=False, box=None, padding=(0, 2))
    counts.add_row("matcher", f"best epoch {matcher['best_epoch']} of {matcher['epochs_run']}: validation "
                   f"NDCG@10 {matcher['validation']['ndcg@10']:.4f}, Recall@10 {matcher['validation']['recall@10']:.4f}")
    if matcher.get("fusion"):
        counts.add_row("fusion", f"two-tower weight {matcher['fusion']['weight']}")
    counts.add_row("output", run_dir)
    counts.add_row("use it", "matcher.from_run: <that directory, or its output root>")
    console.print(counts)


def print_summary(manifest: dict, run_dir: str, console: Console | None = None) -> None:
    console = console or Console(markup=False)  # names and reasons come from user data
    console.print(_stage_table(manifest, f"chatrec run {manifest['run_id']}"))

    users, inputs, outputs = manifest["users"], manifest["inputs"], manifest["outputs"]
    counts = Table(show_header=False, box=None, padding=(0, 2))
    counts.add_row("items", f"{inputs['items']['valid']:,} valid of {inputs['items']['rows']:,}")
    counts.add_row(
        "interactions", f"{inputs['interactions']['valid']:,} valid of {inputs['interactions']['rows']:,}"
    )
    counts.add_row("rejects", f"{manifest['rejects']['total']:,} {manifest['rejects']['by_reason'] or ''}")
    counts.add_row(
        "users covered",
        f"{users['covered']:,} ({users['with_history']:,} from history, "
        f"{users['popularity_fallback']:,} popularity fallback)",
    )
    counts.add_row("recommendations", f"{outputs['recommendations']:,} rows (top {manifest['top_k']})")
    if manifest.get("rerank"):
        from chatrec.rerank.stats import describe

        r = manifest["rerank"]
        counts.add_row("rerank", f"{describe(r)}; {r['seconds_per_user']:.2f} s per prompted user "
                       f"({r['model']['engine']}, {r['template']['version']})")
    cache = manifest.get("embedding_cache")
    if cache and cache.get("key"):
        counts.add_row("item vectors", f"{cache['embedded']:,} embedded, {cache['reused']:,} from the embedding cache")
    refresh = manifest.get("refresh")
    if refresh:
        items = refresh["items"]
        counts.add_row("refresh", f"since {refresh['previous_run'] or 'nothing (first run)'}: items "
                       f"+{items['added']:,} added, {items['changed']:,} changed, {items['removed']:,} removed; "
                       f"users {refresh['users']['recomputed']:,} recomputed, {refresh['users']['reused']:,} reused")
        if refresh.get("matcher"):
            m = refresh["matcher"]
            counts.add_row("matcher", f"retrained ({m['reason']})" if m["retrained"] else f"reused from {m['reused_from']}")
    if manifest.get("resumed_stages"):
        counts.add_row("resumed", f"stages done by an earlier attempt: {', '.join(manifest['resumed_stages'])}")
    if manifest.get("retention", {}).get("deleted"):
        counts.add_row("retention", f"deleted {', '.join(manifest['retention']['deleted'])}")
    counts.add_row("output", run_dir)
    console.print(counts)

    for example in manifest.get("examples", []):
        table = Table(title=f"user {clip_text(example['user_id'])}", title_justify="left")
        for col in ("rank", "item", "score", "reason"):
            table.add_column(col)
        for rec in example["items"]:
            table.add_row(str(rec["rank"]), clip_text(rec["title"]), f"{rec['score']:.3f}", clip_text(rec["reason"], 300))
        console.print(table)


def print_baseline_summary(manifest: dict, run_dir: str, console: Console | None = None) -> None:
    console = console or Console(markup=False)  # names and reasons come from user data
    baseline = manifest["baseline"]
    stages = Table(title=f"baseline {baseline['name']}, run {manifest['run_id']}", title_justify="left")
    for col in ("stage", "seconds", "rows", "detail"):
        stages.add_column(col, justify="right" if col in ("seconds", "rows") else "left")
    for s in manifest["stages"]:
        stages.add_row(s["name"], f"{s['seconds']:.1f}", f"{s['rows']:,} {s['unit']}", s["detail"])
    stages.add_row("total", f"{manifest['wall_seconds']:.1f}", "", "")
    console.print(stages)
    counts = Table(show_header=False, box=None, padding=(0, 2))
    tuning = baseline["tuning"]
    counts.add_row("parameters", f"{baseline['params']} "
                   + (f"(best {tuning['metric']} on valid: {max(g[tuning['metric']] for g in tuning['grid']):.4f})"
                      if isinstance(tuning, dict) else f"({tuning})"))
    counts.add_row("users covered", f"{manifest['users']['covered']:,}")
    counts.add_row("recommendations", f"{manifest['outputs']['recommendations']:,} rows (top {manifest['top_k']})")
    counts.add_row("rejects", f"{manifest['rejects']['total']:,}")
    counts.add_row("output", run_dir)
    console.print(counts)
