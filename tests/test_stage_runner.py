"""The stage runner on a local staging run, without Ray: what it skips, resets, times and marks."""

from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from chatrec.publish import RunOutput
from chatrec.stage_metrics import StageClock
from pipelines.stage_runner import RESUMED, Stage, StageRunner


@dataclass
class Ctx:
    output: RunOutput
    calls: list[str] = field(default_factory=list)
    total: int | None = None


def write(ctx: Ctx, m) -> None:
    ctx.calls.append("write")
    ctx.output.write_table("numbers", pa.table({"n": [1, 2, 3]}), file_name="part-1.parquet")
    ctx.total = 6
    m.rows = 3


def resume(ctx: Ctx, record: dict, m) -> None:
    ctx.calls.append("resume")
    ctx.total = record["total"]
    m.rows = 3


NUMBERS = Stage("numbers", "rows", run=write, writes=("numbers",), resumable=True,
                record=lambda ctx: {"total": ctx.total}, resume=resume,
                then=(lambda ctx: ctx.calls.append("then"),), after=lambda ctx: ctx.calls.append("after"))


def run(tmp_path, steps, done=()) -> tuple[Ctx, StageClock]:
    output = RunOutput(str(tmp_path), "r1")
    clock = StageClock()
    ctx = Ctx(output)
    StageRunner(output, clock, done).run(steps, ctx)
    return ctx, clock


def test_a_stage_runs_then_is_marked_complete_with_its_record(tmp_path):
    RunOutput(str(tmp_path), "r1").prepare(config_sha256="c")
    ctx, clock = run(tmp_path, [NUMBERS])
    assert ctx.calls == ["write", "then", "after"]
    assert ctx.output.stage_record("numbers") == {"total": 6}
    assert [(s["name"], s["rows"], s["detail"]) for s in clock.to_list()] == [("numbers", 3, "")]


def test_a_completed_stage_is_resumed_from_its_record_and_says_so(tmp_path):
    output = RunOutput(str(tmp_path), "r1")
    output.prepare(config_sha256="c")
    output.mark_complete("numbers", {"total": 6})
    ctx, clock = run(tmp_path, [NUMBERS], done=output.prepare(config_sha256="c"))
    assert ctx.calls == ["resume", "after"]  # its `then` steps were part of it: not redone
    assert ctx.total == 6
    assert [(s["name"], s["rows"], s["detail"]) for s in clock.to_list()] == [("numbers", 3, RESUMED)]


def test_a_cut_short_stage_starts_from_clean_outputs(tmp_path):
    output = RunOutput(str(tmp_path), "r1")
    output.prepare(config_sha256="c")
    output.write_table("numbers", pa.table({"n": [9]}), file_name="left-by-a-killed-attempt.parquet")
    run(tmp_path, [NUMBERS], done=output.prepare(config_sha256="c"))
    assert output.count_rows("numbers") == 3


def test_a_stage_not_wanted_leaves_no_trace_and_steps_are_untimed(tmp_path):
    RunOutput(str(tmp_path), "r1").prepare(config_sha256="c")
    skipped = Stage("never", "rows", run=write, when=lambda ctx: False)
    ctx, clock = run(tmp_path, [skipped, lambda ctx: ctx.calls.append("step")])
    assert ctx.calls == ["step"] and clock.to_list() == []


def test_a_resumable_stage_must_say_how_to_resume():
    with pytest.raises(TypeError, match="stage 'x' is resumable: it needs `record` and `resume`"):
        Stage("x", "rows", run=write, resumable=True)
