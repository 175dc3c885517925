"""One writer per output root: a lock file that expires when its holder dies.

`<output>/.lock` holds who took it (run id, host, pid) and when it last proved alive. The
holder rewrites it every HEARTBEAT_SECONDS from a daemon thread. Another run is refused
while the lock is live, and takes it over when the holder is gone:
  - same host and the holder's pid no longer exists (a killed driver): at once;
  - otherwise (another machine, or an object store) once the heartbeat is older than `ttl`.

Locally the lock is created with O_EXCL, so two runs starting at the same instant cannot
both win. On object stores there is no create-if-absent in pyarrow's filesystems: the lock
is written, then read back after a short pause, and the run goes on only if it still names
it (two writers within that pause are not excluded; schedulers should not start two runs
of one output at the same second).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

import pyarrow.fs as pafs

from chatrec.errors import PublishError
from chatrec.publish import output_filesystem

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HEARTBEAT_SECONDS = 30.0
# Five missed heartbeats: long enough for a loaded driver's GC pause, short enough for a
# scheduler's retry after a lost node.
DEFAULT_TTL_SECONDS = 150.0
_OBJECT_STORE_SETTLE_SECONDS = 1.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Context manager: `with OutputLock(root, run_id): ...` holds the output root."""

    def __init__(self, root: str, run_id: str, *, ttl: float = DEFAULT_TTL_SECONDS) -> None:
        self.root_uri = root.rstrip("/")
        self.fs, root_path = output_filesystem(self.root_uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        root_path = os.path.abspath(root_path) if self.local else root_path.rstrip("/")
        self.path = posixpath.join(root_path, LOCK_FILE)
        self.display = f"{self.root_uri}/{LOCK_FILE}"
        self.run_id, self.ttl = run_id, ttl
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record ---------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({
            "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
            "heartbeat": time.time(), "heartbeat_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }).encode()

    def _read(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return json.loads(f.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, OSError):
            # A holder caught mid-write, or a torn file from a crash: treat as held, not stale,
            # unless it is old (its mtime says so).
            return {"heartbeat": self._mtime(), "run_id": "?", "host": "?", "pid": -1}

    def _mtime(self) -> float:
        info = self.fs.get_file_info(self.path)
        return info.mtime.timestamp() if info.mtime is not None else time.time()

    def _stale(self, holder: dict) -> str | None:
        """Why the holder is gone, or None if it may still be running."""
        if holder.get("host") == socket.gethostname() and holder.get("pid", -1) > 0 and not _pid_alive(holder["pid"]):
            return f"its process {holder['pid']} on this host has exited"
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > self.ttl:
            return f"its last heartbeat was {age:.0f} s ago (ttl {self.ttl:.0f} s)"
        return None

    # -- acquire / release --------------------------------------------------------------

    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as e:  # not a directory, no permission, read-only, full...
            raise PublishError(f"output location {self.root_uri} refused: cannot write there ({e})") from e

    def _acquire(self) -> None:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        for _ in range(3):  # a stale lock is removed, then creation is tried again
            if self._create():
                break
            holder = self._read()
            if holder is None:
                continue
            why = self._stale(holder)
            if why is None:
                raise PublishError(
                    f"output {self.root_uri} is in use by run {holder.get('run_id')!r} "
                    f"(pid {holder.get('pid')} on {holder.get('host')}, last heartbeat "
                    f"{holder.get('heartbeat_utc', '?')}): only one run may write an output at a time. "
                    f"If that run has died, its lock expires {self.ttl:.0f} s after its last heartbeat, "
                    f"or remove {self.display} by hand"
                )
            logger.warning("taking over the lock of run %r: %s", holder.get("run_id"), why)
            self.fs.delete_file(self.path)
        else:
            raise PublishError(f"could not take the lock {self.display}: it keeps being re-created")
        self._thread = threading.Thread(target=self._heartbeat, name="chatrec-lock-heartbeat", daemon=True)
        self._thread.start()

    def _create(self) -> bool:
        if self.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
            return True
        if self.fs.get_file_info(self.path).type != pafs.FileType.NotFound:
            return False
        self._write()
        time.sleep(_OBJECT_STORE_SETTLE_SECONDS)
        holder = self._read()
        return bool(holder) and holder.get("token") == self.token

    def _write(self) -> None:
        if self.local:  # replace in one step so a reader never sees half a record
            tmp = f"{self.path}.{self.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._record())
            os.replace(tmp, self.path)
        else:
            with self.fs.open_output_stream(self.path) as f:
                f.write(self._record())

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            holder = self._read()
            if holder is None or holder.get("token") != self.token:
                logger.error("the lock %s was taken by another run; this run no longer holds it", self.display)
                return
            try:
                self._write()
            except OSError as e:  # full or read-only: the run's own writes will say so
                logger.warning("could not refresh the lock %s: %s", self.display, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._read()
        if holder is not None and holder.get("token") == self.token:
            try:
                self.fs.delete_file(self.path)
            except OSError as e:  # a read-only output: the lock expires with this process
                logger.warning("could not remove the lock %s: %s", self.display, e)

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
