"""Stage 1: read and validate every input table; stage 2: render item texts.

Runs on the driver with Arrow and Polars (vectorised, one pass per table): validation needs
global views (duplicate ids, unknown items) and its outputs are small next to the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from chatrec.config import InputsConfig, ItemTextConfig
from chatrec.item_text import render_item_text
from chatrec.knowledge_graph import ItemKnowledge, load_item_knowledge
from chatrec.readers import read_table
from chatrec.validation import (
    Validated,
    user_ids_in_log,
    validate_interactions,
    validate_items,
    validate_users,
)


@dataclass(frozen=True)
class Inputs:
    items: Validated
    interactions: Validated
    users: Validated | None
    knowledge: ItemKnowledge | None
    log_user_ids: pa.Array  # every non-empty user id in the raw log, valid rows or not

    def rejects(self) -> pa.Table:
        parts = [self.items.rejects, self.interactions.rejects]
        if self.users is not None:
            parts.append(self.users.rejects)
        return pa.concat_tables(parts)

    def reject_counts(self) -> dict[str, int]:
        counts = {"items": self.items.rejects.num_rows, "interactions": self.interactions.rejects.num_rows}
        if self.users is not None:
            counts["users"] = self.users.rejects.num_rows
        return counts


def read_inputs(inputs: InputsConfig, item_text: ItemTextConfig) -> Inputs:
    items = validate_items(
        read_table(inputs.items, id_columns=("item_id",)),
        location=inputs.items.display,
        attributes=item_text.attributes,
        categories_delimiter=item_text.categories_delimiter,
    )
    raw_log = read_table(inputs.interactions, id_columns=("user_id", "item_id"))
    interactions = validate_interactions(
        raw_log, location=inputs.interactions.display, item_ids=items.table.column("item_id").combine_chunks()
    )
    users = None
    if inputs.users is not None:
        users = validate_users(read_table(inputs.users, id_columns=("user_id",)), location=inputs.users.display)
    knowledge = None
    if inputs.knowledge_graph is not None:
        knowledge = load_item_knowledge(inputs.knowledge_graph)
    return Inputs(items, interactions, users, knowledge, user_ids_in_log(raw_log))


def item_texts(inputs: Inputs, cfg: ItemTextConfig) -> pa.Table:
    knowledge = inputs.knowledge if cfg.knowledge_graph_facts else None
    return render_item_text(inputs.items.table, knowledge)
