"""Feedback on published recommendations, merged into the next run.

The feedback log (inputs.feedback, schemas.FEEDBACK) says what users did with what they were
shown: `impression` (shown), `click`, `dismiss` ("not for me"). The next run reads it with
the inputs (pipelines/ingest.py) and:

- **clicks become interactions**, with their own timestamp: the click is history from now on
  (the user vector, the matcher's training log, popularity) and is excluded like any seen
  item. A click already in the interaction log (same user, item and timestamp) counts once.
- **dismissals exclude** the item for that user while the dismissal is at most
  `feedback.dismiss_days` older than the reference time. The reference time is the newest
  timestamp in the interaction log and the feedback, not the clock, so re-running the same
  inputs gives the same run. After the window the item may be recommended again.
- **impressions without a click**: with `feedback.ignored_impressions: M`, an item shown to a
  user at least M times within the same window and never clicked by them is excluded the
  same way (a hard down-weight). Without it impressions are only counted. A soft down-weight
  of scores is not built.

Exclusions reach the top-K stage through the histories' `seen_rows`
(chatrec.histories.build_histories). A user with no interaction at all (the popularity
fallback) gets the same popular items as everyone: their exclusions are counted in the
manifest as `exclusions_without_history`, not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from chatrec import schemas
from chatrec.config import FeedbackConfig
from chatrec.validation import FEEDBACK_EVENTS

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class FeedbackMerge:
    """The interaction log with the clicks merged, the (user, item) pairs to exclude, and the
    counts for the manifest."""

    interactions: pa.Table  # schemas.INTERACTIONS
    exclusions: pa.Table  # user_id, item_id: distinct pairs
    manifest: dict


def merge_feedback(interactions: pa.Table, feedback: pa.Table, cfg: FeedbackConfig) -> FeedbackMerge:
    """interactions (schemas.INTERACTIONS, extra columns ignored) + valid feedback
    (schemas.FEEDBACK) -> FeedbackMerge."""
    log = pl.from_arrow(interactions.select(schemas.INTERACTIONS.names))
    events = pl.from_arrow(feedback.select(schemas.FEEDBACK.names))
    by_event = {e: 0 for e in FEEDBACK_EVENTS}
    by_event.update(dict(events.group_by("event").len().iter_rows()))
    stamps = [t for t in (log["timestamp"].max(), events["timestamp"].max()) if t is not None]
    reference = max(stamps) if stamps else 0
    window_start = reference - cfg.dismiss_days * SECONDS_PER_DAY

    clicks = events.filter(pl.col("event") == "click").select(schemas.INTERACTIONS.names).unique(maintain_order=True)
    new_clicks = clicks.join(log, on=schemas.INTERACTIONS.names, how="anti")
    merged = pl.concat([log, new_clicks]) if new_clicks.height else log

    pairs = ["user_id", "item_id"]
    dismissals = events.filter(pl.col("event") == "dismiss")
    active = dismissals.filter(pl.col("timestamp") >= window_start).select(pairs).unique()
    excluded = [active]
    ignored = pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String})
    if cfg.ignored_impressions is not None:
        clicked = events.filter(pl.col("event") == "click").select(pairs).unique()
        ignored = (
            events.filter((pl.col("event") == "impression") & (pl.col("timestamp") >= window_start))
            .join(clicked, on=pairs, how="anti")
            .group_by(pairs)
            .len()
            .filter(pl.col("len") >= cfg.ignored_impressions)
            .select(pairs)
        )
        excluded.append(ignored)
    exclusions = pl.concat(excluded).unique().sort(pairs)
    with_history = merged.select("user_id").unique()
    without_history = exclusions.join(with_history, on="user_id", how="anti").height
    return FeedbackMerge(
        interactions=merged.to_arrow().cast(schemas.INTERACTIONS),
        exclusions=exclusions.to_arrow().cast(pa.schema([pa.field(c, pa.string(), nullable=False) for c in pairs])),
        manifest={
            "rows_valid": events.height,
            "by_event": dict(sorted(by_event.items())),
            "reference_time": int(reference),
            "clicks_merged": new_clicks.height,
            "clicks_already_in_log": clicks.height - new_clicks.height,
            "dismissals_active": active.height,
            "dismissals_expired": dismissals.select(pairs).unique().join(active, on=pairs, how="anti").height,
            "ignored_impression_exclusions": ignored.height,
            "exclusions": exclusions.height,
            "exclusions_without_history": without_history,
        },
    )
