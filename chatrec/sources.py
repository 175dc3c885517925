"""Resolve a user-given location (file, directory, glob; local path or URI) to concrete files.

Everything pyarrow's filesystem layer opens works: local paths, file://, s3://, gs://,
hdfs://, and fsspec-registered schemes through pyarrow's fsspec handler.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import PurePosixPath

import fsspec
import pyarrow.fs as pafs

from chatrec.errors import InputDataError

_GLOB_CHARS = "*?["

# Extension -> format. RecBole atomic files are named by their role.
FORMAT_BY_SUFFIX = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".inter": "recbole",
    ".item": "recbole",
    ".user": "recbole",
    ".kg": "recbole",
    ".link": "recbole",
}


@dataclass(frozen=True)
class ResolvedFiles:
    filesystem: pafs.FileSystem
    paths: tuple[str, ...]  # paths inside `filesystem`
    display: tuple[str, ...]  # what error messages and rejects call each file


# Schemes pyarrow opens itself: its error is the real one (fsspec would only say that its
# own driver for the scheme is not installed).
PYARROW_SCHEMES = {"file", "local", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}


def filesystem_for(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `location` and the path inside it."""
    if "://" not in location:
        return pafs.LocalFileSystem(), location
    try:
        return pafs.FileSystem.from_uri(location)
    except (ValueError, OSError) as e:
        if location.split("://", 1)[0].lower() in PYARROW_SCHEMES:
            raise InputDataError(f"cannot open location: {e}{_hint(str(e))}", source=location) from e
        return _fsspec_filesystem(location, e)


def _hint(error: str) -> str:
    if "resolving region" in error:
        return ("; set AWS_DEFAULT_REGION (or AWS_REGION) to the bucket's region, or check the network, the bucket "
                "name and the credentials")
    return ""


def _fsspec_filesystem(location: str, cause: Exception) -> tuple[pafs.FileSystem, str]:
    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as e:
        raise InputDataError(f"cannot open location: {e}", source=location) from e
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _display(location: str, inner: str) -> str:
    if "://" in location:
        scheme = location.split("://", 1)[0]
        return f"{scheme}://{inner}"
    return inner


def resolve_files(location: str) -> ResolvedFiles:
    """Expand a file, directory or glob into the data files it names, in sorted order.

    Directories are searched recursively; hidden files and files starting with '_'
    (markers such as _SUCCESS) are skipped, as are files of unknown format.
    """
    fs, path = filesystem_for(location)
    if any(c in path for c in _GLOB_CHARS):
        base = path
        while any(c in base for c in _GLOB_CHARS):
            base = str(PurePosixPath(base).parent)
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        paths = sorted(
            i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path)
        )
        if not paths:
            raise InputDataError("the glob matches no files", source=location)
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputDataError("no such file or directory", source=location)
        if info.type == pafs.FileType.Directory:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            paths = sorted(
                i.path
                for i in infos
                if i.type == pafs.FileType.File
                and not PurePosixPath(i.path).name.startswith((".", "_"))
                and PurePosixPath(i.path).suffix.lower() in FORMAT_BY_SUFFIX
            )
            if not paths:
                raise InputDataError("the directory holds no data files", source=location)
        else:
            paths = [path]
    return ResolvedFiles(fs, tuple(paths), tuple(_display(location, p) for p in paths))


def detect_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in FORMAT_BY_SUFFIX:
        return FORMAT_BY_SUFFIX[suffix]
    raise InputDataError(
        f"cannot tell the format from the extension {suffix!r}; set format to parquet, csv or recbole",
        source=path,
    )
