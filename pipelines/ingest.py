"""Stage 1: read and validate every input table; stage 2: render item texts.

With a feedback log (inputs.feedback), its clicks are merged into the interaction log here
and its dismissals become exclusions (chatrec.feedback): every later stage sees the merged log.

Runs on the driver with Arrow and Polars (vectorised, one pass per table): validation needs
global views (duplicate ids, unknown items) and its outputs are small next to the vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from chatrec.config import FeedbackConfig, InputsConfig, ItemTextConfig
from chatrec.feedback import FeedbackMerge, merge_feedback
from chatrec.item_text import render_item_text
from chatrec.knowledge_graph import ItemKnowledge, load_item_knowledge
from chatrec.readers import read_table
from chatrec.validation import (
    Validated,
    user_ids_in_log,
    validate_feedback,
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
    # With inputs.feedback: `interactions.table` already holds its clicks (counted in
    # `feedback.manifest`, so `interactions.table.num_rows` can exceed `rows_read`).
    feedback: Validated | None = None
    merged_feedback: FeedbackMerge | None = None

    @property
    def exclusions(self) -> pa.Table | None:
        """user_id, item_id pairs left out of recommendations (active dismissals), or None."""
        return self.merged_feedback.exclusions if self.merged_feedback is not None else None

    def feedback_manifest(self) -> dict | None:
        """Rows read and valid, rows by event, clicks merged, dismissals active: for the manifest."""
        if self.feedback is None or self.merged_feedback is None:
            return None
        return {"rows": self.feedback.rows_read, **self.merged_feedback.manifest}

    def rejects(self) -> pa.Table:
        parts = [self.items.rejects, self.interactions.rejects]
        if self.users is not None:
            parts.append(self.users.rejects)
        if self.feedback is not None:
            parts.append(self.feedback.rejects)
        return pa.concat_tables(parts)

    def reject_counts(self) -> dict[str, int]:
        counts = {"items": self.items.rejects.num_rows, "interactions": self.interactions.rejects.num_rows}
        if self.users is not None:
            counts["users"] = self.users.rejects.num_rows
        if self.feedback is not None:
            counts["feedback"] = self.feedback.rejects.num_rows
        return counts


def read_inputs(
    inputs: InputsConfig, item_text: ItemTextConfig, feedback_cfg: FeedbackConfig | None = None
) -> Inputs:
    """Read and validate every input; merge the feedback log (if any) into the interactions."""
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
    feedback = merged = None
    if inputs.feedback is not None:
        feedback = validate_feedback(
            read_table(inputs.feedback, id_columns=("user_id", "item_id")),
            location=inputs.feedback.display,
            item_ids=items.table.column("item_id").combine_chunks(),
        )
        merged = merge_feedback(interactions.table, feedback.table, feedback_cfg or FeedbackConfig())
        interactions = Validated(merged.interactions, interactions.rejects, interactions.rows_read)
    return Inputs(items, interactions, users, knowledge, user_ids_in_log(raw_log), feedback, merged)


def item_texts(inputs: Inputs, cfg: ItemTextConfig) -> pa.Table:
    knowledge = inputs.knowledge if cfg.knowledge_graph_facts else None
    return render_item_text(inputs.items.table, knowledge)
