"""What every entry point does the same way: logging, and turning errors into exit codes.

Library code raises chatrec.errors.ChatrecError subclasses; entry points (the `chatrec`
command, the jobs under `jobs/`) are the only places that turn them into a message on
stderr and the error's exit code. Errors raised inside Ray workers arrive wrapped
(RayTaskError, Ray Data's UserCodeException); the chatrec error inside is reported as if
it had been raised on the driver.

Exit codes: 0 ok, 1 internal error (a bug: traceback printed), 2 bad configuration,
3 bad input data, 4 output location refused, 5 model not loadable, 6 data fetch failed,
7 Ray could not be started or joined,
130 interrupted.

`run_command` serves the `chatrec` command (a human reads the output); `job_main` serves
the jobs (a scheduler reads it): one line of reason on stderr, and a JSON summary as the
last line of stdout whatever the outcome.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from chatrec.errors import ChatrecError, ConfigError

INTERRUPTED = 130
INTERNAL_ERROR = 1


def configure_logging(verbose: bool = False) -> None:
    """Package logs to stderr with timestamps; stdout stays free for results."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing chatter


def chatrec_cause(error: BaseException | None) -> ChatrecError | None:
    """The ChatrecError that `error` is or wraps (Ray's `.cause`, or `__cause__`), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ChatrecError):
            return error
        seen.add(id(error))
        error = getattr(error, "cause", None) or error.__cause__
    return None


class JobArgumentParser(argparse.ArgumentParser):
    """A usage error (a missing or bad flag) is a ConfigError, so under `job_main` it gets the
    same one-line reason, exit code 2 and JSON summary as any other bad configuration."""

    def error(self, message: str):  # argparse's hook; it must not return
        raise ConfigError(f"{message} (see --help)")


@dataclass(frozen=True)
class Failure:
    """An expected way for a run to end badly: the exit code and the reason."""

    exit_code: int
    reason: str

    @property
    def one_line(self) -> str:
        """The reason on one line: a multi-line message (a config error lists each bad key) joined."""
        return " ".join(part.strip() for part in self.reason.splitlines() if part.strip())

    def message(self, prog: str, *, one_line: bool = False) -> str:
        reason = self.one_line if one_line else self.reason
        return f"{prog}: {reason}" if self.exit_code == INTERRUPTED else f"{prog}: error: {reason}"


def failure_of(error: BaseException) -> Failure | None:
    """The expected failure `error` stands for, or None when it is a bug."""
    if isinstance(error, KeyboardInterrupt):
        return Failure(INTERRUPTED, "interrupted; nothing was published")
    cause = chatrec_cause(error)
    return Failure(cause.exit_code, str(cause)) if cause is not None else None


def run_command(func: Callable[[], int], *, prog: str = "chatrec") -> int:
    """Run a command for a person: an expected failure prints its message and returns its
    exit code; a bug propagates, so Python prints the traceback and exits 1."""
    try:
        return func()
    except (Exception, KeyboardInterrupt) as e:
        failure = failure_of(e)
        if failure is None:
            raise
        print(failure.message(prog), file=sys.stderr)
        return failure.exit_code


def job_main(func: Callable[[], dict[str, Any]], *, job: str) -> int:
    """Run a job for a scheduler: `func` returns the job's summary.

    Success: the summary, with "status": "succeeded", as the last line of stdout; exit 0.
    Failure: one line "<job>: error: <reason>" on stderr (after the traceback for a bug),
    then {"job", "status": "failed", "exit_code", "error"} as the last line of stdout, and
    that exit code. A Ray connection the job opened is closed first, so no late worker log
    line follows the summary.
    """
    connected_before = _ray_connected()
    try:
        summary = {"job": job, "status": "succeeded", **func()}
        code = 0
    except (Exception, KeyboardInterrupt) as e:
        failure = failure_of(e)
        if failure is None:
            traceback.print_exc()
            failure = Failure(INTERNAL_ERROR, f"internal error (a bug): {type(e).__name__}: {e}")
        print(failure.message(job, one_line=True), file=sys.stderr, flush=True)
        summary = {"job": job, "status": "failed", "exit_code": failure.exit_code, "error": failure.one_line}
        code = failure.exit_code
    if not connected_before and _ray_connected():
        sys.modules["ray"].shutdown()
    print(json.dumps(summary, default=str), flush=True)
    return code


def _ray_connected() -> bool:
    # Asked without importing Ray: a job that fails on its config should not pay for it.
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
