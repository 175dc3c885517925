"""Crashes at every point of the job: kill -9 of the job's process group before every stage
and in the middle of every stage that runs long enough to be caught in, each followed by a
new attempt of the same run id, which gets one stage further before its own crash. The
attempt that is left alone publishes exactly the clean run's output; LATEST never names a
partial run on the way.

The crashes are injected by the stage runner (chatrec.faults, CHATREC_FAULT_INJECTION).
The jobs join the test session's Ray, so an attempt costs its process start, not a Ray start.
The clean run they are compared with is the session's (conftest's clean_reference)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatrec.faults import FAULT_INJECTION_ENV
from chatrec.publish import read_latest
from tests.test_refresh import table

REPO = Path(__file__).resolve().parent.parent
# A stage shorter than this in the clean run is only crashed before, not inside.
CATCHABLE_SECONDS = 1.0
# What differs between two runs of the same inputs: their ids, output roots and times.
VOLATILE = {"run_id", "created_at", "wall_seconds", "stages", "resumed_stages", "config_sha256"}


def _stable(manifest: dict) -> dict:
    stable = {k: v for k, v in manifest.items() if k not in VOLATILE}
    stable["config"] = {k: v for k, v in manifest["config"].items() if k != "output"}
    return stable


@pytest.mark.slow
def test_a_run_crashed_before_and_inside_every_stage_resumes_to_the_clean_runs_output(
        clean_reference, tmp_path):
    # The matcher off (see clean_reference): its outputs could not be compared byte for byte.
    # The clean run is in an output of its own: no embedding cache shared with the crashed one.
    out = tmp_path / "out"
    path = clean_reference.write_job(tmp_path / "job.yaml", out)
    stages = [(s["name"], s["seconds"]) for s in clean_reference.manifest["stages"]]
    faults = [f"before:{name}" for name, _ in stages]
    faults += [f"during:{name}:{seconds / 2:.2f}" for name, seconds in stages if seconds >= CATCHABLE_SECONDS]
    faults.sort(key=lambda f: [n for n, _ in stages].index(f.split(":")[1]))  # in stage order, before first

    # One attempt starts a local Ray of its own (the config's `ray` is not part of what a
    # resume must match): killed with the job, none of its processes may outlive it.
    own_ray = clean_reference.write_job(tmp_path / "own-ray.yaml", out, ray={"num_cpus": 2})
    for fault in faults:
        alone = fault.startswith("during:top-k")
        job = [sys.executable, "-m", "jobs.full_run", "--config", str(own_ray if alone else path), "--run-id", "crashed"]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", FAULT_INJECTION_ENV: fault}
        attempt = subprocess.Popen(job, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        _, stderr = attempt.communicate(timeout=300)
        assert attempt.returncode == -signal.SIGKILL, f"{fault}: not killed\n{stderr[-2000:]}"
        if alone:
            # Its workers (process groups of their own) die with their raylet.
            deadline = time.monotonic() + 5
            while _session_processes(attempt.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _session_processes(attempt.pid), "Ray processes of the killed job outlived it"
        assert read_latest(str(out)) is None, f"{fault}: LATEST names a run"
        assert not (out / "runs" / "crashed").exists() or fault.startswith("during:publish")

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    job = [sys.executable, "-m", "jobs.full_run", "--config", str(path), "--run-id", "crashed"]
    last = subprocess.run(job, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    assert read_latest(str(out)).endswith("runs/crashed")
    assert not (out / ".staging" / "crashed").exists()
    runs = {"clean": clean_reference.run_dir, "crashed": str(out / "runs" / "crashed")}
    for name, key in (("recommendations", ["user_id", "rank"]), ("item_embeddings", ["item_id"]),
                      ("user_embeddings", ["user_id"]), ("rejects", ["source", "row"])):
        assert table(runs["crashed"], name, key).equals(table(runs["clean"], name, key)), name
    manifests = {r: json.loads((Path(d) / "manifest.json").read_text()) for r, d in runs.items()}
    assert _stable(manifests["crashed"]) == _stable(manifests["clean"])
    assert len(faults) >= len(stages) + 2 and any(f.startswith("during:top-k") for f in faults)


ACTOR_STAGES = ("embed-items", "embed-users", "top-k")


@pytest.mark.slow
def test_a_worker_killed_inside_each_actor_stage_is_replaced_counted_and_changes_nothing(
        clean_reference, tmp_path):
    # The job joins the session's Ray: the fault reaches the job's workers in its runtime environment.
    path = clean_reference.write_job(tmp_path / "job.yaml", tmp_path / "out")
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           FAULT_INJECTION_ENV: f"worker:{'+'.join(ACTOR_STAGES)}:{markers}"}
    job = subprocess.run([sys.executable, "-m", "jobs.full_run", "--config", str(path), "--run-id", "faulty"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert sorted(p.name for p in markers.iterdir()) == sorted(ACTOR_STAGES)  # each stage lost a worker
    manifest = json.loads((tmp_path / "out" / "runs" / "faulty" / "manifest.json").read_text())
    restarts = {s["name"]: s.get("worker_restarts", 0) for s in manifest["stages"]}
    assert {name: restarts[name] for name in ACTOR_STAGES} == dict.fromkeys(ACTOR_STAGES, 1)
    clean, faulty = clean_reference.run_dir, str(tmp_path / "out" / "runs" / "faulty")
    for name, key in (("recommendations", ["user_id", "rank"]), ("item_embeddings", ["item_id"]),
                      ("user_embeddings", ["user_id"])):
        assert table(faulty, name, key).equals(table(clean, name, key)), name


def _session_processes(session: int) -> list[str]:
    """Command lines of the live processes of a session (a killed job started one)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    alive.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return alive
