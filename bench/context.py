"""What every section shares: the sizes, one local Ray, the encoder, the synthetic data."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from bench.measure import MemorySampler
from chatrec.config import ChatrecConfig, load_config
from chatrec.datasets.synth import Latent, SynthSpec, latent_structure, synthesize

logger = logging.getLogger("bench")


@dataclass(frozen=True)
class Sizes:
    """Workload sizes. `make bench` took 9.3 minutes at these defaults on 2 idle cores, 13 on
    cores shared with other jobs (load average 2-7, with a 1,000-item growth base) and 19
    under load 6-10.

    all-MiniLM-L6-v2 encodes ~70 of these texts a second on 2 cores at max_length 128, so the
    embedding comparison uses hundreds of texts, not thousands; the top-K stage is cheap per
    user and gets tens of thousands.
    """

    # 768 texts: ~11 s of encoding per run, three runs each of stage, loop and peer in ~2 min.
    embed_texts: int = 768
    embed_reps: int = 3
    # The batch-size and thread sweeps run in one process: 256 texts is 2 to 8 batches.
    sweep_texts: int = 256
    # 20k items x 10k users x 384 dims: ~2-3 s of exact search, longer than the stage's
    # fixed costs, on the scale of a mid-size catalogue.
    topk_items: int = 20_000
    topk_users: int = 10_000
    topk_reps: int = 3
    # The growth grid: the whole job (matcher off) at base, items x10 and users x10. The x10
    # catalogue's 5,000 texts take ~30 s to encode.
    grid_items: int = 500
    grid_users: int = 2_000
    # Short texts in the grid: it measures how each stage grows, and at 32 word pieces the
    # x10 catalogue encodes ~4x faster than at 128.
    grid_max_length: int = 32
    # The whole job at the product's defaults (matcher on): wall time and each stage's share.
    # 1,000 users give the matcher ~9k training examples: its epochs stay near 2 s each.
    job_items: int = 1_000
    job_users: int = 1_000

    @classmethod
    def quick(cls) -> "Sizes":
        """Tiny sizes that exercise every section in a few minutes (for development)."""
        return cls(embed_texts=64, embed_reps=2, sweep_texts=32, topk_items=2_000, topk_users=1_000,
                   topk_reps=2, grid_items=200, grid_users=300, job_items=200, job_users=300)

    def scaled(self, factor: int) -> "Sizes":
        """Every workload `factor` times larger (repetitions unchanged)."""
        if factor < 1:
            raise ValueError(f"--scale must be at least 1, got {factor}")
        grow = {k: v * factor for k, v in asdict(self).items() if not k.endswith("_reps") and k != "grid_max_length"}
        return replace(self, **grow)


@dataclass
class Context:
    sizes: Sizes
    work: Path  # scratch space, removed at the end
    sampler: MemorySampler | None  # None: only for generating data sets
    seed: int = 0

    def config(self, data: Path, **sections) -> ChatrecConfig:
        """The product's configuration for a synthetic data set, plus overrides. Each gets an
        output root of its own: no run finds an earlier run's embeddings to reuse."""
        overrides = {"inputs": {"items": str(data / "items"), "interactions": str(data / "interactions")},
                     "output": {"path": self.scratch("runs")}}
        overrides.update(sections)
        return load_config(None, overrides)

    def dataset(self, items: int, users: int) -> Path:
        """A synthetic data set (generated once per size and run)."""
        path = self.work / f"synth-{items}x{users}"
        if not path.exists():
            synthesize(path, SynthSpec(items=items, users=users, seed=self.seed))
        return path

    def latent(self, items: int, users: int) -> Latent:
        return latent_structure(SynthSpec(items=items, users=users, seed=self.seed))

    def scratch(self, name: str) -> str:
        """A fresh output location under the work directory."""
        return tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)

    @cached_property
    def model_dir(self) -> Path:
        from chatrec.config import DEFAULT_MODEL
        from chatrec.model_loading import resolve_model_dir

        return resolve_model_dir(DEFAULT_MODEL)


def clustered_vectors(latent: Latent, dim: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """(items, dim) unit vectors with the catalogue's cluster structure: each item is its
    cluster's centre plus isotropic noise (`spread` 1.0: cosine ~0.5 within a cluster, ~0
    across). Exact search is the oracle; approximate indexes find this neither trivial nor
    hopeless, unlike uniform random vectors."""
    rng = np.random.default_rng([seed, 7])
    k = int(latent.cluster_of.max()) + 1
    centres = rng.standard_normal((k, dim)).astype(np.float32)  # (k, dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((len(latent.cluster_of), dim)).astype(np.float32) / np.sqrt(dim)  # (items, dim)
    vectors = centres[latent.cluster_of] + spread * noise  # (items, dim)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def table_blocks(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(i, rows) for i in range(0, max(table.num_rows, 1), rows)]


def ray_started(cpus: int | None = None) -> None:
    """One local Ray for the whole benchmark, as `chatrec run` starts on a laptop."""
    import ray

    from chatrec.runtime import configure_ray_data

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token read or written
    if not ray.is_initialized():
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    configure_ray_data()
