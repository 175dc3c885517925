"""The end-of-run summary: stage times and throughput, counts, output location, examples."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(manifest: dict, run_dir: str, console: Console | None = None) -> None:
    console = console or Console()
    stages = Table(title=f"chatrec run {manifest['run_id']}", title_justify="left")
    for col in ("stage", "seconds", "rows", "rows/s", "detail"):
        stages.add_column(col, justify="right" if col in ("seconds", "rows", "rows/s") else "left")
    for s in manifest["stages"]:
        stages.add_row(s["name"], f"{s['seconds']:.1f}", f"{s['rows']:,} {s['unit']}", f"{s['rows_per_s']:,.0f}", s["detail"])
    stages.add_row("total", f"{manifest['wall_seconds']:.1f}", "", "", "")
    console.print(stages)

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
    counts.add_row("output", run_dir)
    console.print(counts)

    for example in manifest.get("examples", []):
        table = Table(title=f"user {example['user_id']}", title_justify="left")
        for col in ("rank", "item", "score", "reason"):
            table.add_column(col)
        for rec in example["items"]:
            table.add_row(str(rec["rank"]), rec["title"], f"{rec['score']:.3f}", rec["reason"])
        console.print(table)


def print_baseline_summary(manifest: dict, run_dir: str, console: Console | None = None) -> None:
    console = console or Console()
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
