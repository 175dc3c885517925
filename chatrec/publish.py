"""Write one run under a staging location and make it visible atomically.

Layout:
    <output>/runs/<run_id>/{recommendations,item_embeddings,user_embeddings,rejects}/ + manifest.json
    <output>/LATEST            "runs/<run_id>", written last; readers follow it

On a local filesystem the run is written to <output>/.staging/<run_id>/ and renamed into
runs/ in one step, then LATEST is replaced atomically. On object stores, where a rename is
a copy, the run is written in place and LATEST (one small object written last) is the
commit point: readers that follow LATEST never see a partial run. A published run is never
overwritten; a failed run leaves LATEST untouched and its staging directory in place.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from chatrec.errors import PublishError
from chatrec.sources import filesystem_for

logger = logging.getLogger(__name__)

LATEST = "LATEST"
WORK_DIR = "_work"  # intermediate tables; removed before commit


class RunOutput:
    def __init__(self, root: str, run_id: str) -> None:
        self.root_uri = root.rstrip("/")
        self.run_id = run_id
        self.fs, root_path = filesystem_for(self.root_uri)
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

    # -- lifecycle ----------------------------------------------------------------------

    def prepare(self) -> None:
        if self.fs.get_file_info(self.final_dir).type != pafs.FileType.NotFound and (
            self.local or self.fs.get_file_info(posixpath.join(self.final_dir, "manifest.json")).type
            != pafs.FileType.NotFound
        ):
            raise PublishError(
                f"run {self.run_id!r} is already published at {self.published_path()}; "
                "published runs are never overwritten: choose another run id"
            )
        if self.fs.get_file_info(self.staging_dir).type != pafs.FileType.NotFound:
            # A crashed attempt with the same id: its partial output is not reused.
            logger.warning("removing partial output of an earlier attempt at %s", self.staging_dir)
            self.fs.delete_dir(self.staging_dir)
        self.fs.create_dir(self.staging_dir, recursive=True)

    def write_table(self, name: str, table: pa.Table, *, file_name: str = "part-00000.parquet") -> None:
        directory = posixpath.join(self.staging_dir, name)
        self.fs.create_dir(directory, recursive=True)
        pq.write_table(table, posixpath.join(directory, file_name), filesystem=self.fs)

    def ensure_table(self, name: str, schema: pa.Schema) -> None:
        """An empty table still gets a file, so readers learn its schema."""
        if self.count_rows(name) is None:
            self.write_table(name, schema.empty_table())

    def count_rows(self, name: str) -> int | None:
        """Rows in a staged table, read from Parquet footers (None when it has no files)."""
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
        return pads.dataset(files, filesystem=self.fs, format="parquet").count_rows()

    def write_bytes(self, name: str, data: bytes) -> None:
        """A file inside the staging run (e.g. matcher/model.pt)."""
        path = posixpath.join(self.staging_dir, name)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_json(self, name: str, data: dict) -> None:
        with self.fs.open_output_stream(posixpath.join(self.staging_dir, name)) as f:
            f.write(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n")

    def commit(self) -> None:
        """Make the run visible: move it into runs/ (local) and write LATEST last."""
        work = posixpath.join(self.staging_dir, WORK_DIR)
        if self.fs.get_file_info(work).type != pafs.FileType.NotFound:
            self.fs.delete_dir(work)
        if self.local:
            os.makedirs(posixpath.dirname(self.final_dir), exist_ok=True)
            os.rename(self.staging_dir, self.final_dir)  # atomic within one filesystem
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
