"""Write one run under a staging location and make it visible atomically.

Layout:
    <output>/runs/<run_id>/{recommendations,item_embeddings,user_embeddings,rejects}/ + manifest.json
    <output>/LATEST            "runs/<run_id>", written last; readers follow it

On a local filesystem the run is written to <output>/.staging/<run_id>/ and renamed into
runs/ in one step, then LATEST is replaced atomically. On object stores, where a rename is
a copy, the run is written in place and LATEST (one small object written last) is the
commit point: readers that follow LATEST never see a partial run. A published run is never
overwritten; a failed run leaves LATEST untouched and its staging directory in place.

Resume: each stage that writes tables ends by writing a completion marker,
`_stages/<stage>.json`. A new attempt with the same run id and the same configuration
finds the staging directory, keeps what the markers vouch for, deletes the tables of the
stage that was cut short and redoes only that and what follows. A marker is written only
after its stage's files are complete, so a marker never vouches for a partial table.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import time

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from chatrec.errors import InputDataError, PublishError
from chatrec.sources import filesystem_for

logger = logging.getLogger(__name__)

LATEST = "LATEST"
WORK_DIR = "_work"  # intermediate tables; removed before commit
STAGES_DIR = "_stages"  # completion markers; removed before commit
ATTEMPT_FILE = "attempt.json"  # what the staged run was started with


def output_filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of an output root: one that cannot be reached refuses the output (exit 4)."""
    try:
        return filesystem_for(root)
    except InputDataError as e:
        raise PublishError(f"output location {root} refused: {e}") from e


# errno values that mean the output cannot take more writes: full, over quota, read-only,
# permission withdrawn. Arrow's errors carry them in the message ("[errno 28] ...").
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_STORAGE_WORDS = [os.strerror(n) for n in _STORAGE_ERRNOS]


def storage_refusal(error: BaseException) -> str | None:
    """The filesystem's reason when `error` (or an error it wraps, in a Ray worker or not) is
    a write refused for lack of space, quota or permission, or a read-only filesystem."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            text = str(error)
            word = next((w for w in _STORAGE_WORDS if w in text), None)
            if word is not None or error.errno in _STORAGE_ERRNOS:
                return word or os.strerror(error.errno)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


class RunOutput:
    def __init__(self, root: str, run_id: str) -> None:
        self.root_uri = root.rstrip("/")
        self.run_id = run_id
        self.fs, root_path = output_filesystem(self.root_uri)
        self.root = root_path.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local:
            self.root = os.path.abspath(self.root)
        self.final_dir = posixpath.join(self.root, "runs", run_id)
        self.staging_dir = (
            posixpath.join(self.root, ".staging", run_id) if self.local else self.final_dir
        )

    # -- locations ----------------------------------------------------------------------

    def path(self, name: str) -> str:
        """Path of a table inside the staging run, as Ray Data and pyarrow take it."""
        inner = posixpath.join(self.staging_dir, name)
        if self.local:
            return inner
        scheme = self.root_uri.split("://", 1)[0]
        return f"{scheme}://{inner}"

    def dataset(self, name: str) -> pads.Dataset:
        """A staged table as a pyarrow dataset, for the driver to read back.

        Goes through the run's own filesystem with a bucket/key path: pyarrow refuses a URI
        (`path(name)` on an object store) together with an explicit filesystem.
        """
        return pads.dataset(posixpath.join(self.staging_dir, name), filesystem=self.fs, format="parquet")

    def published_path(self, name: str = "") -> str:
        inner = posixpath.join(self.final_dir, name) if name else self.final_dir
        if self.local:
            return inner
        return f"{self.root_uri.split('://', 1)[0]}://{inner}"

    def refuses_writes(self) -> bool:
        """Whether a small file can no longer be written at the output root (full, read-only):
        tells the output's failure from another filesystem's (a worker's spill directory)."""
        probe = posixpath.join(self.root, f".write-probe-{os.getpid()}")
        try:
            with self.fs.open_output_stream(probe) as f:
                f.write(b"\0" * 65536)
        except OSError:
            return True
        try:
            self.fs.delete_file(probe)
        except OSError:
            pass
        return False

    # -- lifecycle ----------------------------------------------------------------------

    def published(self) -> bool:
        info = self.fs.get_file_info(self.final_dir)
        if info.type == pafs.FileType.NotFound:
            return False
        if self.local:
            return True
        manifest = posixpath.join(self.final_dir, "manifest.json")
        return self.fs.get_file_info(manifest).type != pafs.FileType.NotFound

    def prepare(self, *, config_sha256: str | None = None) -> list[str]:
        """Make the staging directory ready. Returns the stages an interrupted earlier attempt
        with this run id and configuration completed (to be skipped), or [] for a fresh start.
        Without `config_sha256` the run is not resumable: an earlier attempt is cleared."""
        if self.published():
            raise PublishError(
                f"run {self.run_id!r} is already published at {self.published_path()}; "
                "published runs are never overwritten: choose another run id"
            )
        attempt = self._read_json(posixpath.join(self.staging_dir, STAGES_DIR, ATTEMPT_FILE))
        if attempt is not None and config_sha256 is not None:
            if attempt.get("config_sha256") != config_sha256:
                raise PublishError(
                    f"run {self.run_id!r} has an interrupted attempt at {self.staging_dir} made with another "
                    "configuration: it cannot be resumed with this one. Use a new run id, or delete that "
                    "directory to start this run id over"
                )
            done = self.completed_stages()
            logger.info("resuming run %s: stages already complete: %s", self.run_id, ", ".join(done) or "none")
            return done
        if self.fs.get_file_info(self.staging_dir).type != pafs.FileType.NotFound:
            # Cut short before it recorded its configuration: nothing in it can be vouched for.
            logger.warning("removing partial output of an earlier attempt at %s", self.staging_dir)
            self.fs.delete_dir(self.staging_dir)
        self.fs.create_dir(posixpath.join(self.staging_dir, STAGES_DIR), recursive=True)
        self.write_json(f"{STAGES_DIR}/{ATTEMPT_FILE}", {"run_id": self.run_id, "config_sha256": config_sha256})
        return []

    # -- stage markers ------------------------------------------------------------------

    def completed_stages(self) -> list[str]:
        directory = posixpath.join(self.staging_dir, STAGES_DIR)
        if self.fs.get_file_info(directory).type != pafs.FileType.Directory:
            return []
        names = [posixpath.basename(i.path)[: -len(".json")] for i in self.fs.get_file_info(pafs.FileSelector(directory))
                 if i.path.endswith(".json")]
        return sorted(n for n in names if n != ATTEMPT_FILE[: -len(".json")])

    def stage_record(self, stage: str) -> dict | None:
        """What a completed stage recorded in its marker, or None if it did not complete."""
        return self._read_json(posixpath.join(self.staging_dir, STAGES_DIR, f"{stage}.json"))

    def mark_complete(self, stage: str, record: dict) -> None:
        """Vouch for a stage's outputs. Call only after every file of the stage is written."""
        self.write_json(f"{STAGES_DIR}/{stage}.json", record)

    def reset(self, *names: str) -> None:
        """Delete staged tables/files of a stage about to be (re)done: a killed attempt may have
        left some of their files."""
        for name in names:
            path = posixpath.join(self.staging_dir, name)
            info = self.fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(path)

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(posixpath.join(self.staging_dir, name)) as f:
            return f.read()

    def _read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open_input_stream(path) as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def write_table(self, name: str, table: pa.Table, *, file_name: str = "part-00000.parquet") -> None:
        directory = posixpath.join(self.staging_dir, name)
        self.fs.create_dir(directory, recursive=True)
        pq.write_table(table, posixpath.join(directory, file_name), filesystem=self.fs)

    def ensure_table(self, name: str, schema: pa.Schema) -> None:
        """An empty table still gets a file, so readers learn its schema."""
        if self.count_rows(name) is None:
            self.write_table(name, schema.empty_table())

    def count_rows(self, name: str, where: pads.Expression | None = None) -> int | None:
        """Rows in a staged table (None when it has no files): read from Parquet footers, or,
        given `where`, the rows that match it."""
        directory = posixpath.join(self.staging_dir, name)
        if self.fs.get_file_info(directory).type != pafs.FileType.Directory:
            return None
        files = [
            i.path
            for i in self.fs.get_file_info(pafs.FileSelector(directory, recursive=True))
            if i.type == pafs.FileType.File and i.path.endswith(".parquet")
        ]
        if not files:
            return None
        return pads.dataset(files, filesystem=self.fs, format="parquet").count_rows(filter=where)

    def write_bytes(self, name: str, data: bytes) -> None:
        """A file inside the staging run (e.g. matcher/model.pt)."""
        path = posixpath.join(self.staging_dir, name)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_json(self, name: str, data: dict) -> None:
        """A JSON file in the staging run, whole or not at all (markers must never be torn)."""
        payload = json.dumps(data, indent=2, sort_keys=False).encode() + b"\n"
        path = posixpath.join(self.staging_dir, name)
        if self.local:
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        else:
            with self.fs.open_output_stream(path) as f:
                f.write(payload)

    def publish(self, manifest: dict, *, stages: list[dict], started: float) -> None:
        """Finish the manifest (stage times, wall seconds since `started`, a perf_counter
        value), write it last among the run's files, and commit."""
        manifest["stages"] = stages
        manifest["wall_seconds"] = round(time.perf_counter() - started, 3)
        self.write_json("manifest.json", manifest)
        self.commit()

    def commit(self) -> None:
        """Make the run visible: move it into runs/ (local) and write LATEST last."""
        self.reset(WORK_DIR)
        if self.local:
            os.makedirs(posixpath.dirname(self.final_dir), exist_ok=True)
            os.rename(self.staging_dir, self.final_dir)  # atomic within one filesystem
        # The markers served resume only; a run cut short right here is finished by
        # `commit_pending` on the next attempt.
        markers = posixpath.join(self.final_dir, STAGES_DIR)
        if self.fs.get_file_info(markers).type != pafs.FileType.NotFound:
            self.fs.delete_dir(markers)
        self.write_latest()

    def commit_pending(self) -> bool:
        """True when this run was moved into runs/ but LATEST was never pointed at it (the
        driver died between the two) and no newer run has been published since."""
        if not self.published():
            return False
        latest = read_latest(self.root_uri)
        if latest is not None and posixpath.basename(latest.rstrip("/")) == self.run_id:
            return False
        ours = self._read_json(posixpath.join(self.final_dir, "manifest.json")) or {}
        if latest is None:
            return True
        fs, path = filesystem_for(latest)
        try:
            with fs.open_input_stream(posixpath.join(path, "manifest.json")) as f:
                theirs = json.loads(f.read().decode())
        except FileNotFoundError:
            return True
        return str(ours.get("created_at", "")) > str(theirs.get("created_at", ""))

    def write_latest(self) -> None:
        if self.local:
            tmp = posixpath.join(self.root, f".{LATEST}.{self.run_id}.tmp")
            with open(tmp, "w") as f:
                f.write(f"runs/{self.run_id}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, posixpath.join(self.root, LATEST))
        else:
            with self.fs.open_output_stream(posixpath.join(self.root, LATEST)) as f:
                f.write(f"runs/{self.run_id}\n".encode())
        logger.info("published run %s at %s", self.run_id, self.published_path())

    def published_manifest(self) -> dict:
        return self._read_json(posixpath.join(self.final_dir, "manifest.json")) or {}


def read_latest(root: str) -> str | None:
    """The run directory LATEST points to (as a path/URI), or None before the first run."""
    fs, root_path = filesystem_for(root.rstrip("/"))
    latest = posixpath.join(root_path.rstrip("/"), LATEST)
    if fs.get_file_info(latest).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(latest) as f:
        relative = f.read().decode().strip()
    return f"{root.rstrip('/')}/{relative}"


def add_run_file(run_dir: str, name: str, data: bytes) -> str:
    """Add a derived file (an evaluation, a report) to a published run; returns its location.

    The run's tables are never touched. Locally the file is written beside its final name
    and renamed into place, so a reader never sees half of it; on object stores a single
    object write is already all-or-nothing.
    """
    fs, path = filesystem_for(run_dir.rstrip("/"))
    target = posixpath.join(path, name)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    else:
        with fs.open_output_stream(target) as f:
            f.write(data)
    return posixpath.join(run_dir.rstrip("/"), name)
