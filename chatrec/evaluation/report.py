"""A self-contained HTML report of one or more evaluated runs (figures inlined as PNG).

    metric-vs-K curves · slice bars (cold-start items, history length) · popularity-bias
    histogram · the metric table · an A/B table when a comparison was made
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # files only: no display on batch machines
import matplotlib.pyplot as plt  # noqa: E402

from chatrec.evaluation.compare import MetricDelta  # noqa: E402
from chatrec.evaluation.evaluator import Evaluation  # noqa: E402

_CURVE_METRICS = ("recall", "ndcg", "hit", "precision")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.best{font-weight:bold;background:#eef7ee}.sig{color:#1a7f37}.nsig{color:#888}
img{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _curves(runs: dict[str, Evaluation]) -> str:
    fig, axes = plt.subplots(1, len(_CURVE_METRICS), figsize=(4 * len(_CURVE_METRICS), 3.4))
    for ax, metric in zip(axes, _CURVE_METRICS):
        for name, ev in runs.items():
            ax.plot(ev.ks, [ev.metrics[f"{metric}@{k}"] for k in ev.ks], marker="o", label=name)
        ax.set_title(f"{metric}@K")
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _png(fig)


def _slice_bars(runs: dict[str, Evaluation], metric: str) -> str:
    slices = list(dict.fromkeys(s for ev in runs.values() for s in ev.slices))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(slices) * max(1, len(runs) / 3)), 3.6))
    width = 0.8 / len(runs)
    for i, (name, ev) in enumerate(runs.items()):
        values = [ev.slices.get(s, {}).get("metrics", {}).get(metric, 0.0) for s in slices]
        ax.bar([x + i * width for x in range(len(slices))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(slices))])
    ax.set_xticklabels(
        [f"{s.replace('_', ' ')}\n({next(iter(runs.values())).slices.get(s, {}).get('users', 0)} users)" for s in slices], fontsize=8
    )
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _popularity_histogram(runs: dict[str, Evaluation]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, ev in runs.items():
        ax.hist(ev.popularity_percentiles, bins=20, range=(0, 100), histtype="step", density=True, label=name)
    ax.set_xlabel("popularity percentile of recommended items (100 = most popular)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _png(fig)


def _metric_table(runs: dict[str, Evaluation]) -> str:
    first = next(iter(runs.values()))
    names = list(first.metrics) + list(first.coverage)
    best = {n: max(ev.metrics.get(n, ev.coverage.get(n, 0.0)) for ev in runs.values()) for n in first.metrics}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for run, ev in runs.items():
        cells = []
        for n in names:
            value = ev.metrics.get(n, ev.coverage.get(n))
            cls = ' class="best"' if n in best and len(runs) > 1 and value == best[n] else ""
            cells.append(f"<td{cls}>{value:.4f}</td>")
        rows.append(f"<tr><td>{html.escape(run)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(rows)}</table>"


def _compare_table(names: tuple[str, str], deltas: list[MetricDelta]) -> str:
    rows = []
    for d in deltas:
        rel = f"{d.relative:+.1%}" if d.relative is not None else "—"
        p = f"{d.p_value:.3g}" if d.p_value is not None else "—"
        cls = "sig" if d.significant else "nsig"
        rows.append(
            f"<tr><td>{d.metric}</td><td>{d.a:.4f}</td><td>{d.b:.4f}</td><td>{d.delta:+.4f}</td>"
            f'<td>{rel}</td><td class="{cls}">[{d.ci_low:+.4f}, {d.ci_high:+.4f}]</td><td>{p}</td></tr>'
        )
    a, b = (html.escape(n) for n in names)
    return (
        f"<table><tr><th>metric</th><th>A: {a}</th><th>B: {b}</th><th>B − A</th><th>relative</th>"
        f"<th>95% bootstrap CI</th><th>paired t-test p</th></tr>{''.join(rows)}</table>"
    )


def render_report(
    runs: dict[str, Evaluation],
    *,
    title: str,
    comparison: tuple[tuple[str, str], list[MetricDelta]] | None = None,
) -> str:
    """The whole report as one HTML string; `runs` maps a display name to its evaluation."""
    first = next(iter(runs.values()))
    counts = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in first.counts.items())
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Primary metric: <b>{first.primary_metric}</b>. Full ranking, each user's training items "
        "excluded, binary relevance; means over test users (a user without recommendations scores 0).</p>",
        "<h2>Metrics</h2>",
        _metric_table(runs),
    ]
    if comparison is not None:
        parts += ["<h2>A/B comparison</h2>", _compare_table(*comparison)]
    parts += [
        "<h2>Metric vs K</h2>",
        _curves(runs),
        f"<h2>Slices ({first.primary_metric})</h2>",
        "<p>Cold-start items: test items with no training interaction. History: users by the "
        "number of distinct training items.</p>",
        _slice_bars(runs, first.primary_metric),
        "<h2>Popularity bias</h2>",
        _popularity_histogram(runs),
        "<h2>Test set</h2>",
        f"<table>{counts}</table>",
        "</body></html>",
    ]
    return "\n".join(parts)
