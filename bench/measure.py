"""Timing and memory: interleaved repetitions, median and spread, ratios taken within one run,
and the peak RSS of the driver and of Ray's worker processes.

These machines are shared and noisy, so absolute seconds drift between runs. A stage and its
bare kernel therefore run alternately (A B A B ...), and their ratio is taken per
repetition, from neighbouring runs, before the median is taken.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import psutil

logger = logging.getLogger("bench")

MIB = 1 << 20
# Sampling the process tree every 0.2 s costs well under 1% of a core and still catches
# peaks that last a block (a second or more).
SAMPLE_EVERY_S = 0.2


@dataclass(frozen=True)
class Summary:
    """Median and spread (min-max) of repeated measurements."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> "Summary":
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    def to_dict(self, digits: int = 4) -> dict:
        return {"median": round(self.median, digits), "min": round(self.low, digits),
                "max": round(self.high, digits), "values": [round(v, digits) for v in self.values]}


def interleave(cases: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Run every case `reps` times in turn and return the seconds of each run, per case.

    The order rotates each repetition (A B C, B C A, C A B, ...) so that no case always runs
    first, straight after the previous repetition's slowest case.
    """
    names = list(cases)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            cases[name]()
            seconds[name].append(time.perf_counter() - start)
            logger.info("  %s rep %d: %.2f s", name, rep + 1, seconds[name][-1])
    return seconds


def paired_ratio(numerator: list[float], denominator: list[float]) -> Summary:
    """Per-repetition ratios of two interleaved series (e.g. kernel seconds / stage seconds:
    the stage's throughput as a fraction of the kernel's), summarised."""
    return Summary.of([a / b for a, b in zip(numerator, denominator)])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


@dataclass
class Peak:
    """Highest RSS seen while a window was open (MiB), overall and per tag (stage)."""

    driver: float = 0.0
    workers: float = 0.0  # sum over Ray worker processes (actors and tasks) at one instant
    worker_max: float = 0.0  # the largest single worker
    services: float = 0.0  # Ray's own processes: GCS, raylet, agents
    by_tag: dict[str, dict[str, float]] = field(default_factory=dict)

    def update(self, tag: str | None, driver: float, workers: float, worker_max: float, services: float) -> None:
        self.driver = max(self.driver, driver)
        self.workers = max(self.workers, workers)
        self.worker_max = max(self.worker_max, worker_max)
        self.services = max(self.services, services)
        if tag is not None:
            seen = self.by_tag.setdefault(tag, {"driver": 0.0, "workers": 0.0, "worker_max": 0.0})
            seen["driver"] = max(seen["driver"], driver)
            seen["workers"] = max(seen["workers"], workers)
            seen["worker_max"] = max(seen["worker_max"], worker_max)

    def to_dict(self) -> dict:
        r = lambda v: round(v, 1)  # noqa: E731
        return {"driver_mib": r(self.driver), "workers_mib": r(self.workers), "worker_max_mib": r(self.worker_max),
                "ray_services_mib": r(self.services),
                "by_stage": {t: {k: r(v) for k, v in p.items()} for t, p in self.by_tag.items()}}


class MemorySampler:
    """Samples the RSS of this process (the driver) and of every process below it.

    A local Ray started by `ray.init()` runs under the driver: its workers (`ray::<Actor>`,
    `ray::IDLE`, task workers) are told apart from its services (gcs_server, raylet, the
    agents). RSS counts shared pages in every process that maps them, so the object store's
    shared memory appears in each worker that reads from it: the worker sum is an upper
    bound, the largest single worker a tight figure.
    """

    def __init__(self, interval: float = SAMPLE_EVERY_S) -> None:
        self.interval = interval
        self.me = psutil.Process()
        self.tag: str | None = None
        self._windows: list[Peak] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def window(self) -> Iterator[Peak]:
        peak = Peak()
        self._sample()  # a baseline even for a window shorter than one interval
        with self._lock:
            self._windows.append(peak)
        try:
            yield peak
        finally:
            self._sample()
            with self._lock:
                self._windows.remove(peak)

    def _loop(self) -> None:
        children: list[psutil.Process] = []
        refreshed = 0.0
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if now - refreshed > 1.0:  # listing the tree is the costly part; once a second
                children = self._children()
                refreshed = now
            self._sample(children)

    def _children(self) -> list[psutil.Process]:
        try:
            return self.me.children(recursive=True)
        except psutil.Error:
            return []

    def _sample(self, children: list[psutil.Process] | None = None) -> None:
        children = self._children() if children is None else children
        driver = self.me.memory_info().rss / MIB
        workers, worker_max, services = 0.0, 0.0, 0.0
        for p in children:
            try:
                name = p.name()
                rss = p.memory_info().rss / MIB
            except psutil.Error:
                continue  # exited between listing and reading
            if name.startswith("ray::") and not name.endswith("Agent"):
                workers += rss
                worker_max = max(worker_max, rss)
            else:
                services += rss
        with self._lock:
            for peak in self._windows:
                peak.update(self.tag, driver, workers, worker_max, services)


class StageTagger(logging.Handler):
    """Follows chatrec's stage log ("[name] started") and tags memory samples with the stage."""

    def __init__(self, sampler: MemorySampler) -> None:
        super().__init__(level=logging.INFO)
        self.sampler = sampler

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "[%s] started" and record.args:
            self.sampler.tag = str(record.args[0])

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        progress = logging.getLogger("chatrec.progress")
        progress.addHandler(self)
        try:
            yield
        finally:
            progress.removeHandler(self)
            self.sampler.tag = None
