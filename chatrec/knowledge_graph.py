"""Knowledge-graph facts about items: readable ones become text, opaque ones stay structure.

Input: triples (head, relation, tail) and links (item_id, entity_id), as RecBole's .kg and
.link files or any table with those columns. For each item we take the triples whose head
is the item's entity.

- A fact whose tail is a readable name ("Steven Spielberg") is rendered into the item text
  ("directed by: Steven Spielberg").
- A fact whose tail is an opaque id (Freebase `m.0bln8`, Wikidata `Q42`, a number, a UUID)
  says nothing to a text encoder, so it never enters the text. It is kept as a structured
  attribute `relation -> entity`: two items sharing a rare entity (the same director) is a
  strong, explainable link, used by the reasons (and later by the matcher).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from chatrec.config import KnowledgeGraphInput, TableInput
from chatrec.errors import InputDataError
from chatrec.readers import read_table

_OPAQUE = re.compile(
    r"^(?:[mg]\.[0-9a-z_]+"  # Freebase mids
    r"|Q\d+"  # Wikidata
    r"|\d+"  # bare numbers
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",  # UUIDs
)
_HEADER_ALIASES = {"head_id": "head", "relation_id": "relation", "tail_id": "tail"}


def is_opaque(value: str) -> bool:
    return bool(_OPAQUE.match(value))


def relation_label(relation: str) -> str:
    """'film.film.directed_by' -> 'directed by'; '<http://x/ns/writtenBy>' -> 'writtenBy'."""
    last = re.split(r"[./#:]", relation.strip("<>"))[-1] or relation
    return last.replace("_", " ")


@dataclass(frozen=True)
class ItemKnowledge:
    """Per item: readable facts (text) and opaque entity links (structure).

    `facts`: item_id, facts (list<string> "label: value").
    `entities`: item_id, entities (list<string> "label\\tentity").
    `entity_items`: how many items link to each "label\\tentity" (for specificity).
    """

    facts: pa.Table
    entities: pa.Table
    entity_items: dict[str, int]
    triples_used: int


def _normalise_columns(df: pl.DataFrame, required: tuple[str, ...], what: str, source: str) -> pl.DataFrame:
    df = df.rename({k: v for k, v in _HEADER_ALIASES.items() if k in df.columns})
    for col in required:
        if col not in df.columns:
            raise InputDataError(
                f"{what} table needs columns {list(required)}, it has "
                f"{[c for c in df.columns if not c.startswith('__')]}",
                source=source,
                column=col,
            )
    return df


def load_item_knowledge(kg: KnowledgeGraphInput) -> ItemKnowledge:
    triples = pl.from_arrow(read_table(TableInput(path=kg.triples), id_columns=("head_id", "tail_id", "head", "tail")))
    links = pl.from_arrow(read_table(TableInput(path=kg.links), id_columns=("item_id", "entity_id")))
    triples = _normalise_columns(triples, ("head", "relation", "tail"), "knowledge-graph triples", kg.triples)
    links = _normalise_columns(links, ("item_id", "entity_id"), "knowledge-graph links", kg.links)

    labels = {r: relation_label(r) for r in triples["relation"].drop_nulls().unique().to_list()}
    item_facts = (
        links.select(pl.col("item_id").cast(pl.String), pl.col("entity_id").cast(pl.String))
        .drop_nulls()
        .join(triples.select("head", "relation", "tail").drop_nulls(), left_on="entity_id", right_on="head")
        .with_columns(
            pl.col("relation").replace_strict(labels, return_dtype=pl.String).alias("label"),
            pl.col("tail").str.contains(_OPAQUE.pattern).alias("opaque"),
        )
        .unique(["item_id", "label", "tail"])
        .sort("item_id", "label", "tail")
    )
    facts = (
        item_facts.filter(~pl.col("opaque"))
        .group_by("item_id", maintain_order=True)
        .agg((pl.col("label") + pl.lit(": ") + pl.col("tail")).alias("facts"))
    )
    entity_rows = item_facts.filter(pl.col("opaque")).with_columns(
        (pl.col("label") + pl.lit("\t") + pl.col("tail")).alias("entity")
    )
    entities = entity_rows.group_by("item_id", maintain_order=True).agg(pl.col("entity").alias("entities"))
    counts = entity_rows.group_by("entity").agg(pl.col("item_id").n_unique().alias("n"))
    return ItemKnowledge(
        facts=facts.to_arrow(),
        entities=entities.to_arrow(),
        entity_items=dict(zip(counts["entity"].to_list(), counts["n"].to_list())),
        triples_used=item_facts.height,
    )
