"""Evaluation and A/B tables for the terminal (the full figures are in evaluation.json)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chatrec.evaluation.compare import MetricDelta
from chatrec.evaluation.evaluator import Evaluation

_COVERAGE = {"users_covered": "users", "catalogue_coverage": "catalogue", "mean_popularity_percentile": "pop. pct"}


def _columns(ks: tuple[int, ...]) -> list[str]:
    """NDCG and recall at the middle and the largest K, then MRR and hit at the middle K."""
    mid, top = ks[len(ks) // 2], ks[-1]
    at = dict.fromkeys((mid, top))
    return [f"ndcg@{k}" for k in at] + [f"recall@{k}" for k in at] + [f"mrr@{mid}", f"hit@{mid}"]


def _console() -> Console:
    # Piped output (make, schedulers) gets a width that fits the table, not rich's 80.
    return Console() if sys.stdout.isatty() else Console(width=150)


def print_evaluations(runs: dict[str, Evaluation], console: Console | None = None) -> None:
    """One row per run (display name -> evaluation); the best value of each metric in bold."""
    console = console or _console()
    first = next(iter(runs.values()))
    ks = first.ks
    columns = _columns(ks)
    best = {c: max(ev.metrics[c] for ev in runs.values()) for c in columns}
    table = Table(
        title=f"Evaluation on {first.counts['test_users']:,} test users "
        f"({first.counts['test_positives']:,} test interactions); primary metric {first.primary_metric}",
        title_justify="left",
    )
    table.add_column("run")
    for c in [*columns, *_COVERAGE.values()]:
        table.add_column(c, justify="right")
    for name, ev in runs.items():
        cells = [
            f"[bold]{ev.metrics[c]:.4f}[/bold]" if len(runs) > 1 and ev.metrics[c] == best[c] else f"{ev.metrics[c]:.4f}"
            for c in columns
        ]
        cov = ev.coverage
        cells += [f"{cov['users_covered']:.1%}", f"{cov['catalogue_coverage']:.1%}", f"{cov['mean_popularity_percentile']:.0f}"]
        table.add_row(escape(name), *cells)
    console.print(table)
    cold = first.slices["cold_items"]
    if cold["users"]:
        slice_table = Table(
            title=f"Cold-start items ({cold['positives']:,} test interactions, {cold['users']:,} users)",
            title_justify="left",
        )
        slice_table.add_column("run")
        for k in ks:
            slice_table.add_column(f"recall@{k}", justify="right")
        for name, ev in runs.items():
            metrics = ev.slices["cold_items"]["metrics"]
            slice_table.add_row(escape(name), *(f"{metrics[f'recall@{k}']:.4f}" for k in ks))
        console.print(slice_table)


def print_comparison(names: tuple[str, str], deltas: list[MetricDelta], console: Console | None = None) -> None:
    console = console or _console()
    a, b = (escape(n) for n in names)  # run names are paths: rich would read "[...]" as markup
    table = Table(title=f"A/B: B = {b} against A = {a} ({deltas[0].users:,} paired test users)", title_justify="left")
    for col in ("metric", "A", "B", "B - A", "relative", "95% bootstrap CI", "t-test p", ""):
        table.add_column(col, justify="left" if col in ("metric", "") else "right")
    for d in deltas:
        table.add_row(
            d.metric, f"{d.a:.4f}", f"{d.b:.4f}", f"{d.delta:+.4f}",
            f"{d.relative:+.1%}" if d.relative is not None else "-",
            f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}]",
            f"{d.p_value:.3g}" if d.p_value is not None else "-",
            "significant" if d.significant else "",
        )
    console.print(table)
