"""A synthetic catalogue and interaction log at any scale, in `chatrec run`'s input contract.

Items belong to hidden taste clusters. Each cluster has its own words, categories and
brands, so an item's text tells which cluster it is in. A user draws most interactions from
one to three clusters of their own, and within a cluster picks items by a power law. So
text-to-history matching is learnable, and popularity is skewed as in real logs. How much
each user interacts also follows a power law: a few heavy users, many light ones.

The output is the same for a seed wherever it is cut into files. Each table is generated
GEN_BLOCK rows at a time, from a random stream keyed by (seed, table, block number), and
written out in parts of `chunk_rows` rows. Only one block of users and one part are in
memory at a time, so 10M users stream through in bounded memory. The per-item arrays
(cluster, popularity, counts) are held whole: a few tens of bytes per item.

Layout of the output directory:

    items/part-00000.parquet ...         item_id, title, year, categories, description,
                                         brand, price, language (the last three: attributes)
    interactions/part-00000.parquet ...  user_id, item_id, timestamp (seconds), sorted by user, then time
    synth.json                           the parameters, row counts and skew statistics
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from chatrec.errors import ConfigError, PublishError

logger = logging.getLogger(__name__)

# Rows per random stream. A constant, not the chunk size: that is what keeps the rows the
# same however they are cut into files. 4096 users x ~12 interactions is ~50k log rows per block.
GEN_BLOCK = 4096
# Rows per Parquet part: a million log rows is ~10 MB compressed, a few seconds of reading.
DEFAULT_CHUNK_ROWS = 1_000_000

# Popularity exponents. Item popularity in real catalogues is Zipf-like with an exponent
# near 1 (the top 1% of items draw a large share of the traffic); clusters are less skewed.
ITEM_ZIPF = 1.0
CLUSTER_ZIPF = 0.6
# Interactions per user: Pareto with MIN_HISTORY at the bottom and tail exponent 1.3, so the
# mean is ~12 and a few users have hundreds (capped at MAX_HISTORY).
MIN_HISTORY = 3
ACTIVITY_ALPHA = 1.3
MAX_HISTORY = 1000
# Share of a user's interactions drawn outside their own clusters (by cluster popularity):
# enough noise that the task is not trivially separable.
EXPLORE = 0.15
# Words of a cluster's own vocabulary; the rest of a text comes from the shared vocabulary.
CLUSTER_WORDS = 24
CLUSTER_BRANDS = 5
# Descriptions: log-normal word counts with median 25, so most texts fit 128 word pieces
# and a tail is cut (the encoder's truncation path is exercised too); some items have none.
DESCRIPTION_MEDIAN_WORDS = 25
DESCRIPTION_SIGMA = 0.8
DESCRIPTION_MAX_WORDS = 300
NO_DESCRIPTION = 0.1
# The log spans two years from 2021-01-01 UTC; users arrive throughout the first 80%.
LOG_START = 1_609_459_200
LOG_SPAN = 2 * 365 * 86_400
# Median time between one user's interactions: a day (per-user scale, log-normal).
MEDIAN_GAP_S = 86_400.0

# Random streams: one per table, each split into blocks.
_STREAM_LATENT, _STREAM_ITEMS, _STREAM_USERS = 1, 2, 3

CATEGORIES = (
    "Action", "Adventure", "Animation", "Biography", "Comedy", "Crime", "Documentary", "Drama",
    "Family", "Fantasy", "History", "Horror", "Music", "Mystery", "Romance", "Science",
    "Sport", "Thriller", "Travel", "Western", "Cooking", "Gardening", "Technology", "Business",
    "Health", "Poetry", "Politics", "Nature",
)
LANGUAGES = ("en", "es", "de", "fr", "ja", "pt")
LANGUAGE_SHARES = (0.62, 0.12, 0.08, 0.08, 0.06, 0.04)

# Everyday English, so texts tokenise the way real catalogue text does (mostly one word
# piece a word). Clusters draw their own words from the first part; FILLER is shared.
VOCABULARY = tuple("""
ocean river mountain forest desert island valley harbor garden meadow storm winter summer
autumn spring thunder shadow light fire stone iron silver golden crystal glass paper velvet
engine rocket station signal circuit machine robot network code data planet star galaxy
moon orbit comet nebula voyage journey quest empire kingdom castle tower bridge road city
village street market factory office school library museum theater hospital prison court
detective murder secret mystery clue witness agent spy heist chase escape revenge justice
soldier battle army war peace treaty rebel hero villain king queen prince princess knight
dragon wizard witch ghost vampire monster zombie curse spell magic legend myth prophecy
family mother father brother sister daughter son friend lover wedding divorce baby child
teacher student doctor nurse lawyer farmer sailor pilot chef artist singer dancer writer
painter poet musician guitar piano violin drum song album concert festival dance band
recipe kitchen bread cheese wine coffee tea chocolate spice pepper garlic tomato lemon
apple honey soup salad pasta rice noodle fish chicken steak grill oven bakery dessert
garden flower rose tulip seed soil tree leaf root herb orchard harvest vine cactus moss
football soccer tennis golf boxing racing cycling marathon climbing surfing skiing hockey
coach team league season champion medal victory defeat stadium score match training
startup market finance money bank stock trade company leader strategy growth profit
investor budget contract deal sales brand product customer service manager career
health fitness diet sleep mind body heart brain yoga therapy medicine healing habit
election policy government senate vote campaign nation border reform protest freedom
history ancient medieval modern century revolution dynasty colony frontier pioneer
horse cowboy sheriff outlaw saloon canyon prairie cattle ranch wagon gold railway
camera photo film studio actor director scene script comedy laugh joke prank party
holiday christmas summer beach hotel cruise flight airport passport map compass trail
animal wolf bear tiger lion eagle whale shark fox owl snake insect bird elephant
science physics chemistry biology atom gene cell virus climate energy experiment theory
computer software hardware internet phone screen game puzzle chess card dice arcade
poem verse rhyme story novel tale chapter letter diary memoir essay words voice silence
""".split())
FILLER = tuple("""
the a an of and with in on for from to by about into after before over under between
new old great little big small young last first best true dark bright quiet wild lost
hidden final strange long short deep high cold warm simple classic complete essential
""".split())
_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "dan", "ix", "por", "lu", "ne", "sto", "ber", "qua", "zen")


@dataclass(frozen=True)
class SynthSpec:
    """What to generate. Every field is checked here, before any work."""

    items: int
    users: int
    seed: int = 0
    clusters: int | None = None  # None: about sqrt(items) / 2, between 4 and 64
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    def __post_init__(self) -> None:
        for name in ("items", "users", "chunk_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"synth: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"synth: seed must be a non-negative integer, got {self.seed!r}")
        if self.clusters is not None and not 1 <= self.clusters <= self.items:
            raise ConfigError(
                f"synth: clusters must be between 1 and the number of items ({self.items}), got {self.clusters!r}"
            )

    @property
    def n_clusters(self) -> int:
        if self.clusters is not None:
            return self.clusters
        # Clusters of ~2*sqrt(items) items: a few dozen for a 10k catalogue, each big enough
        # to have a popularity head and tail.
        return min(self.items, max(4, min(64, round(math.sqrt(self.items) / 2))))


@dataclass(frozen=True)
class Latent:
    """The hidden structure the tables are drawn from (also what a benchmark needs to make
    vectors with the same cluster structure as the texts)."""

    cluster_of: np.ndarray  # (items,) int32: each item's cluster
    cluster_share: np.ndarray  # (clusters,) float64: how popular each cluster is, sums to 1
    by_cluster: np.ndarray  # (items,) int64: item numbers ordered by cluster, most popular first
    cdf: np.ndarray  # (items,) float64: cluster c's items occupy (c, c + 1], cumulative popularity
    words: np.ndarray  # (clusters, CLUSTER_WORDS) int32: indices into VOCABULARY
    categories: np.ndarray  # (clusters, 3) int32: primary, then two secondary categories
    brands: list[list[str]]  # per cluster, CLUSTER_BRANDS names, most common first


def _rng(spec: SynthSpec, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([spec.seed, stream, block])


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent  # (n,)
    return weights / weights.sum()


def latent_structure(spec: SynthSpec) -> Latent:
    """Clusters, their vocabularies and each item's cluster and popularity."""
    rng = _rng(spec, _STREAM_LATENT)
    k = spec.n_clusters
    cluster_share = rng.permutation(_zipf(k, CLUSTER_ZIPF))  # (k,)
    # Every cluster gets at least one item; the rest follow the clusters' popularity.
    cluster_of = np.concatenate([
        np.arange(k), rng.choice(k, size=spec.items - k, p=cluster_share)
    ]).astype(np.int32)
    cluster_of = rng.permutation(cluster_of)  # (items,)
    # Popularity inside a cluster: a random rank per item, weight rank^-ITEM_ZIPF.
    by_cluster = np.lexsort((rng.random(spec.items), cluster_of))  # (items,)
    sorted_clusters = cluster_of[by_cluster]
    starts = np.searchsorted(sorted_clusters, np.arange(k))  # (k,)
    rank = np.arange(spec.items) - starts[sorted_clusters] + 1  # (items,) 1 = head of its cluster
    weight = 1.0 / rank.astype(np.float64) ** ITEM_ZIPF
    cumulative = np.cumsum(weight)
    before = np.concatenate([[0.0], cumulative])[starts][sorted_clusters]  # cluster's preceding total
    totals = np.add.reduceat(weight, starts)[sorted_clusters]
    # One searchsorted for every cluster at once: cluster c's items fill (c, c + 1].
    cdf = sorted_clusters + (cumulative - before) / totals
    cdf[np.r_[starts[1:] - 1, spec.items - 1]] = np.arange(1, k + 1)  # exact ends, no rounding gap
    n_vocab = len(VOCABULARY)
    words = np.stack([rng.choice(n_vocab, CLUSTER_WORDS, replace=False) for _ in range(k)]).astype(np.int32)
    categories = np.stack([
        np.r_[c % len(CATEGORIES), rng.choice(len(CATEGORIES), 2, replace=False)] for c in range(k)
    ]).astype(np.int32)
    brands = [
        ["".join(rng.choice(_SYLLABLES, rng.integers(2, 4))).capitalize() for _ in range(CLUSTER_BRANDS)]
        for _ in range(k)
    ]
    return Latent(cluster_of, cluster_share, by_cluster, cdf, words, categories, brands)


def _ids(prefix: str, numbers: np.ndarray, total: int) -> pa.Array:
    """i0042-style ids, zero-padded so they sort in number order."""
    digits = pc.cast(pa.array(numbers, pa.int64()), pa.string())
    padded = pc.utf8_lpad(digits, width=len(str(max(total - 1, 0))), padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), padded, "")


def _phrase(rng: np.random.Generator, own: np.ndarray, n: int, own_share: float) -> list[str]:
    """n words, each from the cluster's own words with probability `own_share`, else filler."""
    mine = rng.random(n) < own_share
    out = [VOCABULARY[w] for w in rng.choice(own, n)]
    filler = rng.choice(len(FILLER), n)
    return [out[i] if mine[i] else FILLER[filler[i]] for i in range(n)]


def _description(rng: np.random.Generator, own: np.ndarray) -> str | None:
    if rng.random() < NO_DESCRIPTION:
        return None
    n = int(min(DESCRIPTION_MAX_WORDS, max(3, rng.lognormal(math.log(DESCRIPTION_MEDIAN_WORDS), DESCRIPTION_SIGMA))))
    words = _phrase(rng, own, n, own_share=0.5)
    sentences, start = [], 0
    while start < n:
        end = min(n, start + int(rng.integers(6, 15)))
        sentence = " ".join(words[start:end])
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        start = end
    return " ".join(sentences)


def item_blocks(spec: SynthSpec, latent: Latent) -> Iterator[pa.Table]:
    """The items table, GEN_BLOCK rows at a time."""
    for block, start in enumerate(range(0, spec.items, GEN_BLOCK)):
        rng = _rng(spec, _STREAM_ITEMS, block)
        numbers = np.arange(start, min(start + GEN_BLOCK, spec.items))
        titles, categories, descriptions, brands = [], [], [], []
        for item in numbers:
            c = int(latent.cluster_of[item])
            own = latent.words[c]
            title = _phrase(rng, own, int(rng.integers(1, 5)), own_share=0.7)
            titles.append(" ".join(w.capitalize() for w in title))
            primary, *secondary = latent.categories[c]
            cats = [CATEGORIES[primary]]
            if rng.random() < 0.5:
                cats.append(CATEGORIES[secondary[int(rng.integers(2))]])
            if rng.random() < 0.1:  # the odd cross-over item
                cats.append(CATEGORIES[int(rng.integers(len(CATEGORIES)))])
            categories.append(list(dict.fromkeys(cats)))
            descriptions.append(_description(rng, own))
            # Brands are Zipf-distributed inside the cluster; a few items have none.
            brand = latent.brands[c][int(rng.choice(CLUSTER_BRANDS, p=_zipf(CLUSTER_BRANDS, 1.0)))]
            brands.append(None if rng.random() < 0.05 else brand)
        n = len(numbers)
        year = 2024 - np.minimum(rng.exponential(12.0, n), 64).astype(np.int32)  # recent items are common
        price = np.round(rng.lognormal(3.0, 0.8, n), 2)
        language = rng.choice(len(LANGUAGES), n, p=LANGUAGE_SHARES)
        yield pa.table({
            "item_id": _ids("i", numbers, spec.items),
            "title": pa.array(titles, pa.string()),
            "year": pa.array(year, pa.int32()),
            "categories": pa.array(categories, pa.list_(pa.string())),
            "description": pa.array(descriptions, pa.string()),
            "brand": pa.array(brands, pa.string()),
            "price": pa.array(price, pa.float64()),
            "language": pa.array([LANGUAGES[i] for i in language], pa.string()),
        })


def interaction_blocks(spec: SynthSpec, latent: Latent) -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray]]:
    """The interaction log, GEN_BLOCK users at a time: (table, item number of each row,
    rows per user)."""
    k = spec.n_clusters
    cap = min(MAX_HISTORY, max(MIN_HISTORY, spec.items))
    for block, start in enumerate(range(0, spec.users, GEN_BLOCK)):
        rng = _rng(spec, _STREAM_USERS, block)
        users = np.arange(start, min(start + GEN_BLOCK, spec.users))  # (u,)
        u = len(users)
        counts = np.minimum(cap, MIN_HISTORY / (1.0 - rng.random(u)) ** (1 / ACTIVITY_ALPHA)).astype(np.int64)  # (u,)
        # Tastes: 1-3 clusters per user, picked by cluster popularity, mixed by Dirichlet weights.
        n_tastes = rng.choice(3, u, p=(0.5, 0.3, 0.2)) + 1  # (u,)
        tastes = rng.choice(k, (u, 3), p=latent.cluster_share)  # (u, 3)
        mix = rng.dirichlet(np.ones(3), u) * (np.arange(3) < n_tastes[:, None])  # (u, 3)
        mix_cdf = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)  # (u, 3)
        owner = np.repeat(np.arange(u), counts)  # (n,) user of each row
        n = len(owner)
        slot = (rng.random(n)[:, None] > mix_cdf[owner, :2]).sum(axis=1)  # (n,) which taste
        cluster = tastes[owner, slot]
        explore = rng.random(n) < EXPLORE
        cluster[explore] = rng.choice(k, int(explore.sum()), p=latent.cluster_share)
        # 1 - random() is in (0, 1], so the draw lands inside cluster c's (c, c + 1].
        position = np.searchsorted(latent.cdf, cluster + (1.0 - rng.random(n)), side="left")
        items = latent.by_cluster[np.minimum(position, spec.items - 1)]  # (n,)
        # Time: each user arrives somewhere in the first 80% of the span, then returns after
        # exponential gaps around their own typical gap.
        arrival = LOG_START + rng.random(u) * LOG_SPAN * 0.8  # (u,)
        scale = MEDIAN_GAP_S * rng.lognormal(0.0, 1.0, u)  # (u,)
        gaps = rng.exponential(1.0, n) * scale[owner]  # (n,)
        ends = np.cumsum(counts)
        running = np.cumsum(gaps)
        offset = np.repeat(running[ends - counts] - gaps[ends - counts], counts)  # running total before each user
        timestamps = np.minimum(arrival[owner] + running - offset, LOG_START + LOG_SPAN).astype(np.int64)
        table = pa.table({
            "user_id": _ids("u", users[owner], spec.users),
            "item_id": _ids("i", items, spec.items),
            "timestamp": pa.array(timestamps, pa.int64()),
        })
        yield table, items, counts


class _PartWriter:
    """Buffers tables and writes Parquet parts of exactly `chunk_rows` rows (the last one fewer)."""

    def __init__(self, directory: Path, chunk_rows: int) -> None:
        self.directory = directory
        self.chunk_rows = chunk_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.parts = 0
        self.rows = 0
        directory.mkdir(parents=True)

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.chunk_rows:
            buffered = pa.concat_tables(self.pending)
            self._write(buffered.slice(0, self.chunk_rows))
            rest = buffered.slice(self.chunk_rows)
            self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.pending_rows or not self.parts:
            self._write(pa.concat_tables(self.pending) if self.pending else None)

    def _write(self, table: pa.Table | None) -> None:
        if table is None:
            return
        pq.write_table(table, self.directory / f"part-{self.parts:05d}.parquet")
        self.parts += 1
        self.rows += table.num_rows


def synthesize(out_dir: str | Path, spec: SynthSpec, *, force: bool = False) -> dict:
    """Generate the data set into the local directory `out_dir`; returns synth.json's contents.

    The directory must not exist or be empty (with `force`, it is replaced). Files go to a
    hidden sibling first, which is renamed into place at the end: an interrupted run leaves
    no half data set.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PublishError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PublishError(f"--out {out} already exists and is not empty; choose another directory or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        manifest = _write(staging, spec)
        (staging / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            aside = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.rename(out, aside)
            os.rename(staging, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write(directory: Path, spec: SynthSpec) -> dict:
    latent = latent_structure(spec)
    items = _PartWriter(directory / "items", spec.chunk_rows)
    for table in item_blocks(spec, latent):
        items.add(table)
    items.close()
    log = _PartWriter(directory / "interactions", spec.chunk_rows)
    per_item = np.zeros(spec.items, np.int64)
    lengths = np.zeros(MAX_HISTORY + 1, np.int64)  # users per history length: bounded memory
    for table, item_numbers, counts in interaction_blocks(spec, latent):
        log.add(table)
        per_item += np.bincount(item_numbers, minlength=spec.items)
        lengths += np.bincount(counts, minlength=MAX_HISTORY + 1)
        logger.debug("synth: %d interactions generated", log.rows + log.pending_rows)
    log.close()
    top = max(1, spec.items // 100)
    median = int(np.searchsorted(np.cumsum(lengths), (spec.users + 1) / 2))
    return {
        "spec": asdict(spec),
        "clusters": spec.n_clusters,
        "rows": {"items": items.rows, "interactions": log.rows, "users": spec.users},
        "parts": {"items": items.parts, "interactions": log.parts},
        "stats": {
            # Skew: the share of all interactions that go to the most popular 1% of items.
            "top_1pct_item_share": round(float(np.sort(per_item)[::-1][:top].sum() / max(log.rows, 1)), 4),
            "items_never_seen": int((per_item == 0).sum()),
            "history_median": median,
            "history_mean": round(log.rows / spec.users, 2),
            "history_max": int(np.flatnonzero(lengths)[-1]),
        },
    }
