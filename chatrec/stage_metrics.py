"""Per-stage wall time, row counts and throughput, logged as plain lines as each stage ends."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator

logger = logging.getLogger("chatrec.progress")


@dataclass
class StageMetric:
    name: str
    unit: str
    rows: int = 0
    seconds: float = 0.0
    detail: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1)}


@dataclass
class StageClock:
    stages: list[StageMetric] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, unit: str) -> Iterator[StageMetric]:
        """Time a stage; the body sets `metric.rows` (and optionally `metric.detail`)."""
        metric = StageMetric(name=name, unit=unit)
        logger.info("[%s] started", name)
        start = time.perf_counter()
        try:
            yield metric
        finally:
            metric.seconds = time.perf_counter() - start
            self.stages.append(metric)
        extra = f" - {metric.detail}" if metric.detail else ""
        logger.info(
            "[%s] done: %d %s in %.1f s (%.0f %s/s)%s",
            name, metric.rows, unit, metric.seconds, metric.rows_per_s, unit, extra,
        )

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.stages]
