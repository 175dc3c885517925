"""Run a job declared as a list of stages: skip what an earlier attempt completed, reset
what was cut short, time each stage and mark it complete.

A job is a sequence of steps over one shared context:
    Stage       timed (a progress line as it starts and ends, a row in the manifest's
                `stages`); a resumable one ends with a completion marker (chatrec.publish)
    a function  a driver step between stages, `step(ctx)`: untimed, not in the manifest

Resume, progress and the markers live here, once; a stage only does its work and says
what it produced.

The test suite's crashes at a chosen stage are injected here (chatrec.faults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Sequence, TypeVar, Union

from chatrec import faults
from chatrec.publish import RunOutput
from chatrec.stage_metrics import StageClock, StageMetric

C = TypeVar("C")  # the job's context: what its stages share

RESUMED = "completed by an earlier attempt"  # a skipped stage's detail in its progress line


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One stage as declared. `run(ctx, metric)` does the work inside the stage's clock,
    sets what it produces on `ctx`, and counts it in `metric.rows` (`metric.detail`
    optional)."""

    name: str  # in the progress lines, the manifest's `stages` and the completion marker
    unit: str  # what `metric.rows` counts
    run: Callable[[C, StageMetric], None]
    writes: tuple[str, ...] = ()  # staged tables and files it writes: reset before it runs
    # Resumable: it ends with a completion marker holding `record(ctx)`; a new attempt of
    # the run skips it and `resume(ctx, record, metric)` takes its outputs back instead.
    resumable: bool = False
    record: Callable[[C], dict] | None = None
    resume: Callable[[C, dict, StageMetric], None] | None = None
    when: Callable[[C], bool] | None = None  # None: always runs
    # Steps after it and before its marker (a second timed phase, writes that follow it):
    # skipped with it when it is resumed.
    then: tuple["Step[C]", ...] = ()
    # After its clock and marker, whether it ran or was resumed: checks on what it produced
    # (its done line comes first), or work that must follow its own timing.
    after: Callable[[C], None] | None = None

    def __post_init__(self) -> None:
        if self.resumable and (self.record is None or self.resume is None):
            raise TypeError(f"stage {self.name!r} is resumable: it needs `record` and `resume`")


Step = Union[Stage[C], Callable[[C], None]]


class StageRunner(Generic[C]):
    """Runs steps in order on one run's staging output, timing stages on `clock`. `done`:
    the stages an earlier attempt of the run completed (`RunOutput.prepare`)."""

    def __init__(self, output: RunOutput, clock: StageClock, done: Iterable[str]) -> None:
        self.output = output
        self.clock = clock
        self.done = frozenset(done)

    def run(self, steps: Sequence[Step[C]], ctx: C) -> None:
        for step in steps:
            self.step(step, ctx)

    def step(self, step: Step[C], ctx: C) -> None:
        if not isinstance(step, Stage):
            step(ctx)
            return
        if step.when is not None and not step.when(ctx):
            return
        resumed = step.resumable and step.name in self.done
        faults.at_stage_start(step.name)
        with self.clock.stage(step.name, step.unit) as metric:
            if resumed:
                metric.detail = RESUMED
                step.resume(ctx, self.output.stage_record(step.name), metric)
            else:
                # A killed attempt may have left some of their files.
                self.output.reset(*step.writes)
                step.run(ctx, metric)
        if not resumed:
            for part in step.then:
                self.step(part, ctx)
            if step.resumable:
                # Only once every file of the stage is written: a marker never vouches for a partial table.
                self.output.mark_complete(step.name, step.record(ctx))
        if step.after is not None:
            step.after(ctx)

