"""How much attention new items get, estimated from the interaction log itself, and how many
of each list's places (`retrieval.new_item_slots: auto`) that earns items without interactions.

The estimate: take the latest tenth of the log's time span, in whole days (the window). Of
the interactions in it, the share that went to items whose first interaction is in the
window too: items that were new when it began. A catalogue whose users pick up new items
quickly (news, short video) shows a large share; one where a few new items trickle in
(MovieLens) a small one. The decision gives new items that share of the K places, rounded:
what a user's next K interactions would hold of new items if the window is typical.

It needs only sums that add up over parts of a log (`LogTimes`): per catalogue item its
first second and its interactions, per day the interactions. So a log validated on the
cluster gets them from its chunks' tasks, in the same pass, and the driver adds them up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DAY = 86_400
# The window: this share of the log's time span, at its end.
WINDOW = 0.1
# Fewer interactions than this in the window: too little to estimate from, no slots.
MIN_WINDOW_INTERACTIONS = 1_000
# Auto never gives new items more than this share of a list.
MAX_SHARE_OF_LIST = 0.5
_NEVER = np.iinfo(np.int64).max


@dataclass(frozen=True)
class NewItemDemand:
    window_start: int | None  # seconds since the epoch (a day's start); None: the log spans one day
    window_interactions: int  # interactions at or after window_start
    to_new_items: int  # of those, interactions with items first seen at or after window_start
    new_items: int  # items first seen at or after window_start

    @property
    def share(self) -> float:
        return self.to_new_items / self.window_interactions if self.window_interactions else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "share": round(self.share, 6), "window": WINDOW}


NO_ESTIMATE = NewItemDemand(None, 0, 0, 0)


@dataclass
class LogTimes:
    """A log's (or a part's) sums: per catalogue row its first second (never: int64 max) and
    its interactions, and interactions per day (day = timestamp // 86,400)."""

    first_seen: np.ndarray  # (n_items,) int64
    interactions: np.ndarray  # (n_items,) int64
    per_day: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, timestamps: np.ndarray, rows: np.ndarray, n_items: int) -> "LogTimes":
        """(n,) timestamps and (n,) catalogue rows of a log's interactions."""
        timestamps, rows = np.asarray(timestamps, np.int64), np.asarray(rows, np.int64)
        first = np.full(n_items, _NEVER, np.int64)
        np.minimum.at(first, rows, timestamps)
        days, counts = np.unique(timestamps // DAY, return_counts=True)
        return cls(first, np.bincount(rows, minlength=n_items).astype(np.int64),
                   dict(zip(days.tolist(), counts.tolist())))

    def add(self, other: "LogTimes") -> None:
        np.minimum(self.first_seen, other.first_seen, out=self.first_seen)
        self.interactions += other.interactions
        for day, count in other.per_day.items():
            self.per_day[day] = self.per_day.get(day, 0) + count

    @property
    def items_seen(self) -> np.ndarray:
        return self.interactions > 0  # (n_items,) bool

    def demand(self) -> NewItemDemand:
        if len(self.per_day) < 2:
            return NO_ESTIMATE
        first_day, last_day = min(self.per_day), max(self.per_day)
        start_day = last_day - (last_day - first_day) // round(1 / WINDOW)
        start = start_day * DAY
        new = self.first_seen >= start  # (n_items,) never-seen items are excluded by their 0 count
        in_window = sum(count for day, count in self.per_day.items() if day >= start_day)
        return NewItemDemand(start, in_window, int(self.interactions[new].sum()),
                             int((new & self.items_seen).sum()))


def decide_slots(configured: int | str, demand: NewItemDemand | None, top_k: int,
                 items_without_interactions: int) -> tuple[int, str]:
    """`retrieval.new_item_slots` (a number or "auto") -> (slots, why), for the manifest."""
    if configured != "auto":
        return int(configured), "set in the configuration"
    if items_without_interactions == 0:
        return 0, "no item is without interactions"
    if demand is None or demand.window_start is None:
        return 0, "the log spans a single day: no time to estimate new-item demand from"
    if demand.window_interactions < MIN_WINDOW_INTERACTIONS:
        return 0, (f"{demand.window_interactions} interactions in the log's latest {WINDOW:.0%} of time, "
                   f"fewer than {MIN_WINDOW_INTERACTIONS:,}: too few to estimate new-item demand from")
    slots = min(int(top_k * MAX_SHARE_OF_LIST), int(np.floor(demand.share * top_k + 0.5)))
    return slots, (f"{demand.share:.1%} of the interactions in the log's latest {WINDOW:.0%} of time went to "
                   f"items first seen in it: {slots} of {top_k} places")
