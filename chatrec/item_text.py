"""Render each item as the text the encoder reads. Deterministic and versioned.

Template v1, parts left out when empty:

    {title} ({year}). Categories: {c1}, {c2}. {description} {attr}: {value}. {fact}; {fact}.

Changing the template changes every text hash (and so, in a refresh, invalidates cached
embeddings): add a new version rather than editing v1. Truncation to the encoder's
max length happens at tokenisation, on token boundaries.
"""

from __future__ import annotations

import hashlib

import polars as pl
import pyarrow as pa

from chatrec import schemas
from chatrec.knowledge_graph import ItemKnowledge

TEMPLATE_VERSION = "v1"


def _sentence(expr: pl.Expr) -> pl.Expr:
    """Append '.' unless the text already ends a sentence."""
    return pl.when(expr.str.contains(r"[.!?]$")).then(expr).otherwise(expr + pl.lit("."))


def render_item_text(items: pa.Table, knowledge: ItemKnowledge | None = None) -> pa.Table:
    """Validated items (schemas.ITEMS, sorted by item_id) -> schemas.ITEM_TEXT.

    `row` is each item's position in the item matrix: the order of `items`.
    """
    df = pl.from_arrow(items).with_row_index("row")
    if knowledge is not None and knowledge.facts.num_rows:
        df = df.join(pl.from_arrow(knowledge.facts), on="item_id", how="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("facts"))

    def part(expr: pl.Expr) -> pl.Expr:
        return pl.when(expr.is_not_null() & (expr != "")).then(expr)

    head = pl.when(pl.col("year").is_not_null() & (pl.col("year") != "")).then(
        pl.col("title") + pl.lit(" (") + pl.col("year") + pl.lit(")")
    ).otherwise(pl.col("title"))
    categories = pl.lit("Categories: ") + pl.col("categories").list.join(", ")
    parts = [
        _sentence(head),
        part(pl.when(pl.col("categories").list.len() > 0).then(_sentence(categories))),
        part(_sentence(pl.col("description"))),
        part(pl.col("attributes").list.join(". ")).pipe(lambda e: part(_sentence(e))),
        part(pl.col("facts").list.join("; ")).pipe(lambda e: part(_sentence(e))),
    ]
    text = pl.concat_str(parts, separator=" ", ignore_nulls=True)
    out = df.select(
        "item_id",
        pl.col("row").cast(pl.Int32),
        text.alias("text"),
    ).with_columns(pl.col("text").map_batches(_sha256, return_dtype=pl.String).alias("text_sha256"))
    return out.to_arrow().cast(schemas.ITEM_TEXT)


def _sha256(texts: pl.Series) -> pl.Series:
    return pl.Series([hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts], dtype=pl.String)
