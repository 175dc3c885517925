"""New-item demand estimated from the log (chatrec.new_item_demand) and the slots it decides.
The chunks of a log validated on the cluster add up to the same sums: tests/test_validate_log.py."""

import numpy as np
import pytest

from chatrec.config import load_config
from chatrec.errors import ConfigError
from chatrec.new_item_demand import DAY, MIN_WINDOW_INTERACTIONS, NO_ESTIMATE, LogTimes, NewItemDemand, decide_slots

ITEMS = {"old0": 0, "old1": 1, "mid": 2, "new0": 3, "new1": 4, "never": 5}


def known_log(copies: int = 1):
    """Days 0 to 99; the window is the latest tenth: days 90 to 99. In it: 30 interactions with
    items seen before it (one of them first seen on day 50), 10 with two items first seen on
    day 95 and 96. So 10 of the window's 40 interactions went to new items: a share of 0.25.
    Item "never" has no interaction. `copies`: every interaction that many times."""
    rows = [("old0", 0), ("old1", 0), ("mid", 50), ("old0", 99)]
    rows += [(f"old{i % 2}", 90 + i % 9) for i in range(27)] + [("mid", 91), ("mid", 92)]
    rows += [("new0", 95 + i % 5) for i in range(6)] + [("new1", 96 + i % 3) for i in range(4)]
    items, days = zip(*(rows * copies))
    return np.array(days, np.int64) * DAY + 3_600, np.array([ITEMS[i] for i in items])


def test_share_of_the_latest_interactions_that_went_to_items_first_seen_in_them():
    timestamps, rows = known_log()
    times = LogTimes.of(timestamps, rows, len(ITEMS))
    assert times.items_seen.tolist() == [True] * 5 + [False]
    assert times.demand() == NewItemDemand(window_start=90 * DAY, window_interactions=40, to_new_items=10, new_items=2)
    assert times.demand().share == 0.25


def test_parts_of_a_log_add_up_to_the_whole():
    timestamps, rows = known_log()
    order = np.random.default_rng(0).permutation(len(rows))
    parts = [LogTimes.of(timestamps[p], rows[p], len(ITEMS)) for p in np.array_split(order, 4)]
    total = LogTimes.of(np.zeros(0, np.int64), np.zeros(0, np.int64), len(ITEMS))
    for part in parts:
        total.add(part)
    whole = LogTimes.of(timestamps, rows, len(ITEMS))
    assert np.array_equal(total.first_seen, whole.first_seen) and np.array_equal(total.interactions, whole.interactions)
    assert total.per_day == whole.per_day and total.demand() == whole.demand()


def test_the_decision():
    copies = MIN_WINDOW_INTERACTIONS // 40 + 1  # enough interactions in the window
    demand = LogTimes.of(*known_log(copies), len(ITEMS)).demand()
    assert decide_slots("auto", demand, top_k=20, items_without_interactions=1) == (
        5, "25.0% of the interactions in the log's latest 10% of time went to items first seen in it: 5 of 20 places")
    assert decide_slots("auto", demand, top_k=20, items_without_interactions=0) == (0, "no item is without interactions")
    assert decide_slots(3, demand, top_k=20, items_without_interactions=1) == (3, "set in the configuration")
    few = LogTimes.of(*known_log(), len(ITEMS)).demand()
    slots, why = decide_slots("auto", few, top_k=20, items_without_interactions=1)
    assert slots == 0 and why.startswith("40 interactions in the log's latest 10% of time, fewer than 1,000")
    hungry = NewItemDemand(window_start=0, window_interactions=5_000, to_new_items=4_500, new_items=9)
    assert decide_slots("auto", hungry, top_k=20, items_without_interactions=1)[0] == 10  # at most half a list


def test_a_log_within_one_day_gives_no_estimate():
    one_day = LogTimes.of(np.arange(5, dtype=np.int64) * 600, np.arange(5), 6)
    assert one_day.demand() == NO_ESTIMATE
    assert decide_slots("auto", one_day.demand(), 20, 1) == (
        0, "the log spans a single day: no time to estimate new-item demand from")
    assert LogTimes.of(np.zeros(0, np.int64), np.zeros(0, np.int64), 3).demand() == NO_ESTIMATE


def test_config_takes_auto_or_a_count_within_top_k():
    inputs = {"inputs": {"items": "items.parquet", "interactions": "log.parquet"}}
    assert load_config(None, inputs).retrieval.new_item_slots == "auto"
    assert load_config(None, {**inputs, "retrieval": {"new_item_slots": 2}}).retrieval.new_item_slots == 2
    for wrong in (-1, 21, "some"):
        with pytest.raises(ConfigError, match="new_item_slots"):
            load_config(None, {**inputs, "retrieval": {"new_item_slots": wrong}})
