"""The output filesystem failing mid-run: full, then read-only. Each time the run stops with
exit code 4 and a message that says what happened and how to go on, LATEST is untouched,
and the same run id finishes once the filesystem is writable again, with a clean run's
output. The output lives on a small tmpfs the test mounts (skipped where mounting is not
allowed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatrec.publish import read_latest
from tests.test_refresh import table

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def small_filesystem(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Write zeros until the filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def _attempt(job: list[str], env: dict, stage: str, fault) -> subprocess.CompletedProcess:
    """Run the job; when `stage` starts, apply `fault`."""
    proc = subprocess.Popen(job, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"[{stage}] started" in line:
            fault()
            break
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(job, proc.returncode, out, "".join(seen) + err)


@pytest.mark.slow
def test_a_full_or_read_only_output_stops_the_run_clearly_and_the_run_resumes(
        clean_reference, tmp_path, small_filesystem):
    # The session's clean run's job (conftest's clean_reference), its output on the tmpfs.
    out = small_filesystem / "out"
    path = clean_reference.write_job(tmp_path / "job.yaml", out)
    job = [sys.executable, "-m", "chatrec.cli", "run", "--config", str(path), "--run-id", "night"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    filler: list[Path] = []
    full = _attempt(job, env, "embed-users", lambda: filler.append(_fill(small_filesystem)))
    assert full.returncode == 4, full.stderr[-3000:]
    # Ray Data logs the worker's traceback on the way; the run ends on our message.
    ending = full.stderr.strip().splitlines()[-1]
    assert ending.startswith("chatrec: error: the output") and "No space left on device" in ending
    assert "run the same run id again" in ending
    assert read_latest(str(out)) is None
    filler[0].unlink()

    remount = ["mount", "-o", "remount,ro", str(small_filesystem)]
    read_only = _attempt(job, env, "top-k", lambda: subprocess.run(remount, check=True))
    subprocess.run(["mount", "-o", "remount,rw", str(small_filesystem)], check=True)
    assert read_only.returncode == 4, read_only.stderr[-3000:]
    ending = read_only.stderr.strip().splitlines()[-1]
    assert ending.startswith("chatrec: error: the output") and "Read-only file system" in ending
    assert read_latest(str(out)) is None

    last = subprocess.run(job, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    assert read_latest(str(out)).endswith("runs/night")
    clean, night = clean_reference.run_dir, str(out / "runs" / "night")
    for name, key in (("recommendations", ["user_id", "rank"]), ("user_embeddings", ["user_id"])):
        assert table(night, name, key).equals(table(clean, name, key)), name
