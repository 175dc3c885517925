"""Progress of a stage, counted where its work runs and printed by the driver.

Workers (Ray Data actors, tasks) add the rows they finish to a board: one small Ray actor
per driver that holds a count per stage and needs no CPU. While a stage runs, the driver
reads the board every PROGRESS_EVERY_S seconds and logs one plain line (progress bars
garble job logs): rows done, of how many when that is known, rate and ETA. A stage that
has no counter still says every interval that it is running, so a long job is never
silent for longer than that.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from chatrec import faults


logger = logging.getLogger("chatrec.progress")

# Plain periodic progress lines (not bars, which garble `ray job submit` logs): at least one
# this often from anything long-running, a stage, an actor, a training epoch.
PROGRESS_EVERY_S = 30.0

_board = None
_board_lock = threading.Lock()


def _progress_board():
    """The driver's board, created on first use (Ray must be initialised)."""
    global _board
    import ray

    @ray.remote(num_cpus=0, max_concurrency=4)
    class ProgressBoard:
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def add(self, key: str, rows: int) -> None:
            self.counts[key] = self.counts.get(key, 0) + int(rows)

        def count(self, key: str) -> int:
            return self.counts.get(key, 0)

    with _board_lock:
        # A board of an earlier Ray session (ray.shutdown, then init again) is gone with it.
        if _board is None or _board[0] != ray.get_runtime_context().get_job_id():
            _board = (ray.get_runtime_context().get_job_id(), ProgressBoard.remote())
        return _board[1]


@dataclass(frozen=True)
class ProgressCounter:
    """What a worker is handed to count its finished rows (picklable: a Ray actor handle
    and a key). `add` does not wait for the board."""

    board: object  # ray.actor.ActorHandle
    key: str

    def add(self, rows: int) -> None:
        self.board.add.remote(self.key, rows)

    def count(self) -> int:
        import ray

        return int(ray.get(self.board.count.remote(self.key)))

    @property
    def stage(self) -> str:
        return self.key.rsplit(":", 1)[0]

    def worker_started(self) -> None:
        """A worker of the stage started (a restarted or replaced one counts again)."""
        self.board.add.remote(f"{self.key}#workers", 1)

    def workers_started(self) -> int:
        import ray

        return int(ray.get(self.board.count.remote(f"{self.key}#workers")))


def new_counter(stage: str) -> ProgressCounter:
    """A fresh counter for `stage` (its key is unique, so a repeated stage starts at 0)."""
    return ProgressCounter(_progress_board(), f"{stage}:{time.monotonic_ns()}")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(stage: str, unit: str, elapsed: float, done: int | None, total: int | None) -> str:
    """One plain progress line: elapsed, rows done (of total), rate and ETA where known."""
    line = f"[{stage}] running {format_duration(elapsed)}"
    if done is None:
        return line
    rate = done / elapsed if elapsed > 0 else 0.0
    line += f": {done:,}" + (f" of {total:,}" if total else "") + f" {unit} ({rate:,.0f} {unit}/s"
    if total and rate > 0 and done < total:
        line += f", ETA {format_duration((total - done) / rate)}"
    return line + ")"


class StageHeartbeat:
    """Logs `progress_line` every `every` seconds until stopped, from a daemon thread."""

    def __init__(self, stage: str, unit: str, every: float = PROGRESS_EVERY_S) -> None:
        self.stage, self.unit, self.every = stage, unit, every
        self.counter: ProgressCounter | None = None
        self.total: int | None = None
        self._stop = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._beat, name=f"progress-{stage}", daemon=True)

    def start(self) -> "StageHeartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                done = self.counter.count() if self.counter is not None else None
            except Exception:  # the board is unreachable (Ray shutting down): say what is known
                done = None
            logger.info(progress_line(self.stage, self.unit, time.perf_counter() - self._started, done, self.total))


class Counted:
    """A Ray Data callable class that counts its rows on a board: `inner` built from
    `inner_kwargs` does the work; every batch it finishes is added to `counter`. Lets any
    actor pool report progress without knowing about it."""

    def __init__(self, *, inner: type, inner_kwargs: dict, counter: ProgressCounter | None,
                 count_output: bool = False) -> None:
        self.inner = inner(**inner_kwargs)
        self.counter = counter
        self.count_output = count_output
        # The test suite's fault, decided once here rather than for every batch.
        self.fault = counter is not None and faults.worker_fault(counter.stage)
        if counter is not None:
            counter.worker_started()

    def __call__(self, batch):
        if self.fault:
            faults.in_worker(self.counter.stage)
        out = self.inner(batch)
        if self.counter is not None:
            self.counter.add(out.num_rows if self.count_output else batch.num_rows)
        return out


def counted(inner: type, inner_kwargs: dict, counter: ProgressCounter | None, *, count_output: bool = False) -> dict:
    """`map_batches(**counted(Fn, kwargs, counter), ...)` in place of `map_batches(Fn,
    fn_constructor_kwargs=kwargs, ...)`: Fn, or `Counted` around it when there is a counter.
    It counts the rows of each batch in, or with `count_output` the rows out."""
    if counter is None:
        return {"fn": inner, "fn_constructor_kwargs": inner_kwargs}
    return {"fn": Counted, "fn_constructor_kwargs": {"inner": inner, "inner_kwargs": inner_kwargs, "counter": counter,
                                                     "count_output": count_output}}
