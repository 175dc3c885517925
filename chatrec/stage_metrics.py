"""Per-stage wall time, row counts and throughput, logged as plain lines as each stage ends;
while a stage runs, a progress line at least every PROGRESS_EVERY_S seconds (chatrec.progress)."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from chatrec.progress import PROGRESS_EVERY_S, ProgressCounter, StageHeartbeat, new_counter

logger = logging.getLogger("chatrec.progress")


@dataclass
class StageMetric:
    name: str
    unit: str
    rows: int = 0
    seconds: float = 0.0
    detail: str = ""
    heartbeat: StageHeartbeat | None = field(default=None, repr=False, compare=False)
    workers: int | None = None  # the stage's actor pool, when it has one that counts its rows
    worker_restarts: int = 0  # its workers that died and were restarted or replaced

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def counter(self, total: int | None = None, workers: int | None = None) -> ProgressCounter | None:
        """A counter for the workers of this stage to add their finished rows to (of `total`,
        when known): the progress lines then say how far the stage is. With `workers` (the
        pool's size), the workers that had to be restarted are counted too. None without Ray."""
        import ray

        if self.heartbeat is None or not ray.is_initialized():
            return None
        self.heartbeat.total, self.workers = total, workers
        self.heartbeat.counter = new_counter(self.name)
        return self.heartbeat.counter

    def count_restarts(self) -> None:
        counter = self.heartbeat.counter if self.heartbeat is not None else None
        if counter is not None and self.workers:
            self.worker_restarts = max(0, counter.workers_started() - self.workers)

    def to_dict(self) -> dict:
        record = {"name": self.name, "unit": self.unit, "rows": self.rows, "seconds": round(self.seconds, 3),
                  "detail": self.detail, "rows_per_s": round(self.rows_per_s, 1)}
        if self.worker_restarts:
            record["worker_restarts"] = self.worker_restarts
        return record


@dataclass
class StageClock:
    stages: list[StageMetric] = field(default_factory=list)
    every: float = PROGRESS_EVERY_S  # seconds between a running stage's progress lines

    @contextmanager
    def stage(self, name: str, unit: str) -> Iterator[StageMetric]:
        """Time a stage; the body sets `metric.rows` (and optionally `metric.detail`, and
        hands `metric.counter()` to its workers)."""
        metric = StageMetric(name=name, unit=unit)
        logger.info("[%s] started", name)
        metric.heartbeat = StageHeartbeat(name, unit, self.every).start()
        start = time.perf_counter()
        try:
            yield metric
        finally:
            metric.seconds = time.perf_counter() - start
            metric.heartbeat.stop()
            self.stages.append(metric)
        metric.count_restarts()  # a stage that completed (one that failed may have lost Ray with it)
        extra = f" - {metric.detail}" if metric.detail else ""
        logger.info(
            "[%s] done: %d %s in %.1f s (%.0f %s/s)%s",
            name, metric.rows, unit, metric.seconds, metric.rows_per_s, unit, extra,
        )

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.stages]
