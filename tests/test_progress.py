"""Progress lines: counted by Ray Data actors on a real local Ray, printed by the driver."""

from __future__ import annotations

import logging
import re
import time

import pyarrow as pa

from chatrec.progress import counted, format_duration, progress_line
from chatrec.stage_metrics import StageClock


def test_progress_lines_say_done_of_total_rate_and_eta():
    assert progress_line("top-k", "users", 50.0, 1_000, 4_000) == (
        "[top-k] running 50s: 1,000 of 4,000 users (20 users/s, ETA 2m30s)")
    assert progress_line("top-k", "users", 50.0, 1_000, None) == "[top-k] running 50s: 1,000 users (20 users/s)"
    assert progress_line("fusion", "items", 3_700.0, None, None) == "[fusion] running 1h01m"
    assert format_duration(59.4) == "59s" and format_duration(61) == "1m01s"


class SlowDouble:
    """A Ray Data callable class that takes its time over each batch."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.pause)
        return pa.table({"id": batch.column("id"), "twice": pa.compute.multiply(batch.column("id"), 2)})


def test_actor_pool_rows_are_counted_and_the_driver_prints_them(ray_cluster, caplog):
    import ray

    caplog.set_level(logging.INFO, logger="chatrec.progress")
    clock = StageClock(every=0.25)
    with clock.stage("doubling", "rows") as m:
        counter = m.counter(total=60)
        out = ray.data.range(60).map_batches(
            **counted(SlowDouble, {"pause": 0.15}, counter), batch_size=5, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=1),
        ).take_all()
        m.rows = len(out)
    assert sorted(r["twice"] for r in out) == [2 * i for i in range(60)]  # the inner class did the work
    deadline = time.monotonic() + 5
    while counter.count() < 60 and time.monotonic() < deadline:  # adds are fire-and-forget
        time.sleep(0.05)
    assert counter.count() == 60
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[doubling] running")]
    assert lines, "no progress line while the stage ran"
    counts = [int(re.search(r": ([\d,]+) of 60 rows", line).group(1).replace(",", "")) for line in lines]
    assert counts == sorted(counts) and counts[-1] > 0  # it moved forward while the stage ran
    assert clock.to_list()[0]["rows"] == 60 and set(clock.to_list()[0]) == {
        "name", "unit", "rows", "seconds", "detail", "rows_per_s"}


def test_a_stage_without_a_counter_still_says_it_is_running(caplog):
    caplog.set_level(logging.INFO, logger="chatrec.progress")
    clock = StageClock(every=0.1)
    with clock.stage("tuning", "items"):
        time.sleep(0.45)
    beats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[tuning] running")]
    assert 2 <= len(beats) <= 5
    # Once the stage is done its heartbeat stops.
    time.sleep(0.3)
    assert len([r for r in caplog.records if r.getMessage().startswith("[tuning] running")]) == len(beats)
