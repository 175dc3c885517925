"""Stage 1: read and validate every input table; stage 2: render item texts.

With a feedback log (inputs.feedback), its clicks are merged into the interaction log here
and its dismissals become exclusions (chatrec.feedback): every later stage sees the merged log.

Runs on the driver with Arrow and Polars (vectorised, one pass per table): the catalogue's
checks need global views (duplicate ids) and its outputs are small next to the vectors. A log
too big for the driver is only planned here and validated on the cluster
(pipelines.validate_log), against the catalogue's ids.
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
from pipelines.validate_log import LogPlan, plan_log


@dataclass(frozen=True)
class Inputs:
    items: Validated
    interactions: Validated | None  # None: too big for the driver, validated on the cluster (log_plan)
    users: Validated | None
    knowledge: ItemKnowledge | None
    log_user_ids: pa.Array | None  # every non-empty user id in the raw log, valid rows or not
    # With inputs.feedback: `interactions.table` already holds its clicks (counted in
    # `feedback.manifest`, so `interactions.table.num_rows` can exceed `rows_read`).
    feedback: Validated | None = None
    merged_feedback: FeedbackMerge | None = None
    log_plan: LogPlan | None = None  # the log's chunks, when the cluster validates it

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
        """The rejects found in the driver (a log validated on the cluster has its own)."""
        parts = [self.items.rejects] + ([self.interactions.rejects] if self.interactions is not None else [])
        if self.users is not None:
            parts.append(self.users.rejects)
        if self.feedback is not None:
            parts.append(self.feedback.rejects)
        return pa.concat_tables(parts)

    def reject_counts(self, log_rejects: int = 0) -> dict[str, int]:
        """By source; `log_rejects`: those of a log validated on the cluster."""
        log = self.interactions.rejects.num_rows if self.interactions is not None else log_rejects
        counts = {"items": self.items.rejects.num_rows, "interactions": log}
        if self.users is not None:
            counts["users"] = self.users.rejects.num_rows
        if self.feedback is not None:
            counts["feedback"] = self.feedback.rejects.num_rows
        return counts


def read_inputs(
    inputs: InputsConfig, item_text: ItemTextConfig, feedback_cfg: FeedbackConfig | None = None, *,
    log_in_driver_below: int | None = None,
) -> Inputs:
    """Read and validate every input; merge the feedback log (if any) into the interactions.

    With `log_in_driver_below`, a log of that many rows or more (from its footers; estimated
    for text files) is only planned and its columns checked: the cluster validates it
    (pipelines.validate_log). Not with a feedback log, whose merge needs the log here."""
    items = validate_items(
        read_table(inputs.items, id_columns=("item_id",)),
        location=inputs.items.display,
        attributes=item_text.attributes,
        categories_delimiter=item_text.categories_delimiter,
    )
    plan = None
    if log_in_driver_below is not None and inputs.feedback is None:
        plan = plan_log(inputs.interactions)
        if plan.rows < log_in_driver_below:
            plan = None
    raw_log = interactions = None
    if plan is None:
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
    log_user_ids = user_ids_in_log(raw_log) if raw_log is not None else None
    return Inputs(items, interactions, users, knowledge, log_user_ids, feedback, merged, log_plan=plan)


def item_texts(inputs: Inputs, cfg: ItemTextConfig) -> pa.Table:
    knowledge = inputs.knowledge if cfg.knowledge_graph_facts else None
    return render_item_text(inputs.items.table, knowledge)
