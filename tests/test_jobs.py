"""The job entry points' contract with schedulers, without a cluster: exit codes, one-line
reasons, the JSON summary as the last line of stdout, and the nightly refresh's honesty.

The pipeline itself is stubbed here; tests/test_ray_jobs.py submits the real thing.
"""

import json
import sys

import pytest

import pipelines.full_run
from chatrec.entrypoint import run_command
from chatrec.errors import ConfigError, InputDataError
from jobs import evaluate, full_run, nightly_refresh
from pipelines.full_run import RunResult
from tests.conftest import write_parquet
from tests.test_evaluate_cli import publish_run


def outcome(capsys) -> tuple[list[str], dict]:
    """stderr's lines, and the JSON summary on stdout's last line."""
    captured = capsys.readouterr()
    return captured.err.strip().splitlines(), json.loads(captured.out.strip().splitlines()[-1])


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(f"inputs: {{items: {tmp_path}/items.parquet, interactions: {tmp_path}/log.parquet}}\n"
                    f"output: {{path: {tmp_path}/out}}\n")
    return str(path)


@pytest.fixture
def pipeline(monkeypatch):
    """Stands in for pipelines.full_run.run_job; records the config it was given."""
    calls = []

    def fake(cfg, refresh=False):
        calls.append((cfg, refresh))
        manifest = {
            "users": {"covered": 2, "with_history": 2, "popularity_fallback": 0},
            "outputs": {"recommendations": 6}, "rejects": {"total": 0}, "cluster": {"cpus": 2},
            "stages": [{"name": "embed-items", "unit": "items", "rows": 3, "seconds": 1.5, "rows_per_s": 2.0}],
            "wall_seconds": 2.0,
        }
        return RunResult(cfg.output.run_id, f"{cfg.output.path}/runs/{cfg.output.run_id}", manifest)

    monkeypatch.setattr(pipelines.full_run, "run_job", fake)
    return calls


def test_success_prints_the_summary_last(config, pipeline, capsys):
    assert full_run.main(["--config", config, "--run-id", "r1"]) == 0
    _, summary = outcome(capsys)
    assert summary["job"] == "jobs.full_run" and summary["status"] == "succeeded"
    assert summary["run_id"] == "r1" and summary["run_dir"].endswith("/out/runs/r1")
    assert summary["latest"] is None  # the stub published nothing
    assert summary["stages"] == [{"name": "embed-items", "rows": 3, "seconds": 1.5}]


def test_usage_and_config_errors_exit_2_with_one_line(tmp_path, capsys):
    assert full_run.main([]) == 2
    err, summary = outcome(capsys)
    assert err == ["jobs.full_run: error: the following arguments are required: --config/-c (see --help)"]
    assert summary == {"job": "jobs.full_run", "status": "failed", "exit_code": 2,
                       "error": "the following arguments are required: --config/-c (see --help)"}

    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: {items: a}\nretreival: {}\n")
    assert full_run.main(["--config", str(bad)]) == 2
    err, summary = outcome(capsys)
    # The config error lists two problems on two lines; a job reports them on one.
    assert len(err) == 1 and err[0] == f"jobs.full_run: error: {summary['error']}"
    assert "missing required key 'inputs.interactions'" in summary["error"]
    assert "unknown key 'retreival'" in summary["error"]


class WorkerError(Exception):
    """Shaped like Ray's RayTaskError: the original error in `.cause`."""

    def __init__(self, cause):
        super().__init__("worker failed")
        self.cause = cause


def test_an_error_from_a_worker_keeps_its_exit_code(config, monkeypatch, capsys):
    def fails(cfg):
        raise WorkerError(InputDataError("the table has no column 'title'", source="items.parquet"))

    monkeypatch.setattr(pipelines.full_run, "run_job", fails)
    assert full_run.main(["--config", config]) == 3
    err, summary = outcome(capsys)
    assert err == ["jobs.full_run: error: file items.parquet: the table has no column 'title'"]
    assert summary["exit_code"] == 3


def test_a_bug_exits_1_with_its_traceback_and_still_a_summary(config, monkeypatch, capsys):
    def fails(cfg):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pipelines.full_run, "run_job", fails)
    assert full_run.main(["--config", config]) == 1
    err, summary = outcome(capsys)
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1] == "jobs.full_run: error: internal error (a bug): ZeroDivisionError: division by zero"
    assert summary["status"] == "failed" and summary["exit_code"] == 1


def test_nightly_refresh_runs_the_incremental_refresh_under_a_nightly_id(config, pipeline, capsys):
    with pytest.raises(SystemExit):
        nightly_refresh.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--keep" in help_text and "resumes" in help_text

    assert nightly_refresh.main(["--config", config, "--keep", "3"]) == 0
    assert nightly_refresh.main(["--config", config]) == 0
    (first, refresh), (second, _) = pipeline
    assert refresh is True and first.output.keep == 3 and second.output.keep is None
    # A fresh run id every night, even from the same config.
    assert first.output.run_id.startswith("nightly-") and second.output.run_id != first.output.run_id
    _, summary = outcome(capsys)
    assert summary["job"] == "jobs.nightly_refresh" and summary["incremental"] is True
    assert summary["run_id"] == second.output.run_id

    assert nightly_refresh.main(["--config", config, "--run-id", "nightly-2024-06-01"]) == 0
    assert pipeline[-1][0].output.run_id == "nightly-2024-06-01"


def test_evaluate_job_compares_a_run_with_its_baseline(tmp_path, capsys):
    train = write_parquet(tmp_path / "train.parquet", {"user_id": ["u1", "u2"], "item_id": ["a", "b"], "timestamp": [1, 1]})
    test = write_parquet(tmp_path / "test.parquet", {"user_id": ["u1", "u2"], "item_id": ["b", "c"], "timestamp": [5, 5]})
    baseline = publish_run(tmp_path / "baseline", "ra", {"u1": ["c"], "u2": ["a"]}, train, "popularity")
    config = tmp_path / "job.yaml"
    config.write_text(f"inputs: {{items: i.parquet, interactions: {train}}}\noutput: {{path: {tmp_path}/chatrec}}\n")
    publish_run(tmp_path / "chatrec", "rb", {"u1": ["b"], "u2": ["c"]}, train)

    code = evaluate.main(["--config", str(config), "--baseline", str(baseline), "--test", str(test),
                          "--k", "1", "--bootstrap", "100"])

    assert code == 0
    _, summary = outcome(capsys)
    assert [r["run_id"] for r in summary["runs"]] == ["ra", "rb"]  # A (the baseline), then B
    assert summary["runs"][1]["metrics"]["hit@1"] == pytest.approx(1.0)
    recall = next(d for d in summary["compare"] if d["metric"] == "recall@1")
    assert recall["a"] == 0 and recall["b"] == pytest.approx(1.0)
    assert (tmp_path / "chatrec" / "runs" / "rb" / "compare-ra.json").is_file()
    assert summary["report"].endswith("/runs/rb/compare-ra.html")


def test_evaluate_job_baseline_needs_exactly_one_run(tmp_path, capsys):
    assert evaluate.main(["--run", "x", "y", "--baseline", "z", "--test", "t.parquet"]) == 2
    err, _ = outcome(capsys)
    assert err == ["jobs.evaluate: error: --baseline compares one run against it; got 2 runs: ['x', 'y']"]


def test_run_command_keeps_the_cli_behaviour(capsys):
    def bad_config():
        raise ConfigError("invalid configuration (f.yaml):\n  - unknown key 'x'")

    def interrupted():
        raise KeyboardInterrupt

    def bug():
        raise ValueError("boom")

    assert run_command(bad_config) == 2
    assert capsys.readouterr().err == "chatrec: error: invalid configuration (f.yaml):\n  - unknown key 'x'\n"
    assert run_command(interrupted) == 130
    assert capsys.readouterr().err == "chatrec: interrupted; nothing was published\n"
    with pytest.raises(ValueError, match="boom"):
        run_command(bug)


class FakeRay:
    def __init__(self, connected: bool):
        self.connected = connected
        self.shutdowns = 0

    def is_initialized(self) -> bool:
        return self.connected

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.connected = False


def test_a_job_closes_only_the_ray_connection_it_opened(monkeypatch, capsys):
    from chatrec.entrypoint import job_main

    ray = FakeRay(connected=False)
    monkeypatch.setitem(sys.modules, "ray", ray)

    def connects():
        ray.connected = True
        return {}

    assert job_main(connects, job="jobs.test") == 0
    assert ray.shutdowns == 1  # before the summary, so no worker log line follows it
    ray.connected = True  # e.g. the test session's own Ray
    assert job_main(lambda: {}, job="jobs.test") == 0
    assert ray.shutdowns == 1 and ray.connected
    capsys.readouterr()
