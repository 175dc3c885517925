"""The run manifest: what was run, on what, with what result. Written last, before commit."""

from __future__ import annotations

import platform
import secrets
from datetime import datetime, timezone
from importlib import metadata

_LIBRARIES = ("chatrec", "ray", "torch", "transformers", "faiss-cpu", "faiss-gpu", "pyarrow", "polars", "numpy")


def new_run_id(now: datetime | None = None) -> str:
    """UTC timestamp plus a random suffix: sorts by time, never collides in practice."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Python's and the installed libraries' versions (plus `extra` distributions, if installed)."""
    versions = {"python": platform.python_version()}
    for name in (*_LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
