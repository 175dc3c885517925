"""Fault injection for the test suite: a crash at a chosen point of a run.

CHATREC_FAULT_INJECTION (unset in production) holds one of:
    before:<stage>                  the driver kills its process group (SIGKILL) as <stage> starts
    during:<stage>:<seconds>        ...that many seconds into <stage>
    worker:<stage>[+<stage>...]:<dir>
                                    the first worker of each named actor stage to get a batch
                                    kills itself (SIGKILL) once: a marker file in <dir> says
                                    it has (workers read the variable from the environment
                                    their Ray was started with)
"""

from __future__ import annotations

import os
import signal
import threading

FAULT_INJECTION_ENV = "CHATREC_FAULT_INJECTION"


def _fault() -> tuple[str, str]:
    when, _, rest = os.environ.get(FAULT_INJECTION_ENV, "").partition(":")
    return when, rest


def at_stage_start(stage: str) -> None:
    """The driver, as `stage` starts: kill the job's process group now or a while into it."""
    when, rest = _fault()
    name, _, seconds = rest.partition(":")
    if when not in ("before", "during") or name != stage:
        return
    kill = lambda: os.killpg(os.getpgid(0), signal.SIGKILL)  # noqa: E731
    if when == "before":
        kill()
    else:
        timer = threading.Timer(float(seconds), kill)
        timer.daemon = True  # a job that ends first is not killed on its way out
        timer.start()


def worker_fault(stage: str) -> bool:
    """Whether a worker of `stage` is asked to die (read once, as the worker starts)."""
    when, rest = _fault()
    return when == "worker" and stage in rest.partition(":")[0].split("+")


def in_worker(stage: str) -> None:
    """A worker of `stage` asked to die (`worker_fault`), about to process a batch: die,
    once per stage."""
    marker_dir = _fault()[1].partition(":")[2]
    try:
        os.close(os.open(os.path.join(marker_dir, stage), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def runtime_env() -> dict | None:
    """A job joining a running cluster hands the fault to its workers (their environment is
    the cluster's, not the driver's)."""
    value = os.environ.get(FAULT_INJECTION_ENV)
    return {"env_vars": {FAULT_INJECTION_ENV: value}} if value else None
