"""The item catalogue as the scoring stages need it: vectors plus what reasons are made of.

Built once on the driver and put in the Ray object store once; every user-vector and
top-K actor reads the same copy (numpy arrays from the object store are zero-copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from chatrec.knowledge_graph import ItemKnowledge


@dataclass(frozen=True)
class ItemCatalogue:
    """Row i of every field describes the item at row i of the item matrix."""

    item_ids: np.ndarray  # (n,) object: item_id strings, sorted
    vectors: np.ndarray  # (n, dim) float32, unit length
    display_titles: list[str]  # "Title (year)"
    categories: list[frozenset[str]]
    # "label\tentity" strings of opaque knowledge-graph links, and how many items share each.
    entities: list[frozenset[str]]
    entity_items: dict[str, int]

    @property
    def size(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# Reasons, examples and the summary name items by their title: a title longer than this is
# cut (with "…"). The item text the encoder reads keeps the whole title.
DISPLAY_CHARS = 120


def clip(column: pl.Expr, limit: int = DISPLAY_CHARS) -> pl.Expr:
    return pl.when(column.str.len_chars() > limit).then(column.str.slice(0, limit - 1) + pl.lit("…")).otherwise(column)


def clip_text(text: str, limit: int = DISPLAY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def display_title() -> pl.Expr:
    """"Title (year)", or the title alone without a year: how reasons name items (clipped)."""
    return clip(
        pl.when(pl.col("year").is_not_null() & (pl.col("year") != ""))
        .then(pl.col("title") + pl.lit(" (") + pl.col("year") + pl.lit(")"))
        .otherwise(pl.col("title"))
    ).alias("display")


def build_catalogue(
    items: pa.Table, vectors: np.ndarray, knowledge: ItemKnowledge | None = None
) -> ItemCatalogue:
    """items (schemas.ITEMS, sorted by item_id) and their vectors in the same order."""
    df = pl.from_arrow(items.select(["item_id", "title", "year", "categories"]))
    if knowledge is not None and knowledge.entities.num_rows:
        df = df.join(pl.from_arrow(knowledge.entities), on="item_id", how="left", maintain_order="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.List(pl.String)).alias("entities"))
    titles = df.select(display_title()).to_series()
    return ItemCatalogue(
        item_ids=np.asarray(df["item_id"].to_list(), dtype=object),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        display_titles=titles.to_list(),
        categories=[frozenset(c or ()) for c in df["categories"].to_list()],
        entities=[frozenset(e or ()) for e in df["entities"].to_list()],
        entity_items=dict(knowledge.entity_items) if knowledge is not None else {},
    )
