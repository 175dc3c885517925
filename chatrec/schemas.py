"""Arrow schemas of the tables that flow from stage to stage, and of the published outputs.

Each stage reads tables of one schema and writes tables of another; nothing reaches into
another stage's internals. Embedding columns are fixed-size lists so a reader knows the
dimension from the schema alone.
"""

from __future__ import annotations

import pyarrow as pa

# Bookkeeping columns carried from the readers to validation, so a reject can name
# the file and row it came from. They never reach a published table.
SOURCE_COL = "__source"
ROW_COL = "__row"

# -- validated inputs -------------------------------------------------------------------

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("year", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("description", pa.string()),
        # Remaining columns rendered as "name: value", in column order, nulls left out.
        pa.field("attributes", pa.list_(pa.string())),
    ]
)

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds since the epoch
    ]
)

# The feedback log (inputs.feedback): what users did with published recommendations.
FEEDBACK = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),  # impression | click | dismiss
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("attributes", pa.list_(pa.string())),  # "name: value", as for items
    ]
)

REJECTS = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # file the row came from
        pa.field("row", pa.int64(), nullable=False),  # 1-based data row in that file
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.string()),  # the row as JSON, for inspection
    ]
)

# -- intermediate tables ----------------------------------------------------------------

ITEM_TEXT = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),  # position in the item matrix
        pa.field("text", pa.string(), nullable=False),
        pa.field("text_sha256", pa.string(), nullable=False),
    ]
)

HISTORIES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        # Most recent first, at most history.max_items: the user vector's input.
        pa.field("recent_rows", pa.list_(pa.int32())),
        # Every item the user interacted with: excluded from their recommendations.
        pa.field("seen_rows", pa.list_(pa.int32())),
        pa.field("history_len", pa.int32(), nullable=False),
        # "name: value. ..." from the users table; null without one.
        pa.field("profile_text", pa.string()),
        # Fingerprint of everything the user vector is computed from (the user tower, the
        # recent items and their texts, the profile): a refresh reuses a vector whose key
        # is unchanged. Null until the user stage sets it.
        pa.field("history_key", pa.int64()),
    ]
)


def embedding_type(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


def user_vectors(dim: int) -> pa.Schema:
    """Histories plus the user vector: the top-K stage's input."""
    return HISTORIES.append(pa.field("embedding", embedding_type(dim), nullable=False))


# -- published outputs --------------------------------------------------------------------


def item_embeddings(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("embedding", embedding_type(dim), nullable=False),
            pa.field("text_sha256", pa.string(), nullable=False),
            pa.field("model_fingerprint", pa.string(), nullable=False),
        ]
    )


def user_embeddings(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("embedding", embedding_type(dim), nullable=False),
            pa.field("history_len", pa.int32(), nullable=False),
            pa.field("history_key", pa.int64()),  # as in HISTORIES
        ]
    )


# `strategy` says which signal produced a row: "two-tower" (the matcher's towers) or
# "collaborative" (recency-weighted EASE carried it, in fused scoring), "content" (zero-shot
# text vectors, with the matcher off; in fused scoring, a new item whose zero-shot text
# term carried it), "popularity" (users with no usable history), or a
# baseline's name (`chatrec baseline`).
RECOMMENDATIONS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1..K
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("because_item_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        # The rerank stage's one-sentence explanation in the user's terms; null when no
        # language model placed the item (stage off, user not selected, slot filled).
        pa.field("explanation", pa.string()),
    ]
)

# One row per user of a run with the rerank stage: what the language model's answer did.
# status: used (every slot from the model) | partial (some slots filled from the top-K order)
# | fallback (the top-K order) | not-selected (outside rerank.users or the token budget).
# reason: why not fully used (not-json, wrong-count, unknown-title, ...); see chatrec.rerank.parsing.
RERANK_STATUS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("question", pa.string()),  # a clarifying question for a conversational front end
        pa.field("tokens_in", pa.int32(), nullable=False),  # 0 when no prompt was sent
        pa.field("tokens_out", pa.int32(), nullable=False),
        pa.field("llm_items", pa.int32(), nullable=False),  # slots the model's answer filled
    ]
)
