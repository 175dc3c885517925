"""Shared fixtures: one real local Ray for the session, and a tiny real BERT built from a config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

# Hypothesis profiles of the fuzzing suite (tests/test_fuzz_inputs.py). `ci`, the default,
# is bounded, seeded (pyproject's --hypothesis-seed: the same examples every run) and
# replays the failures saved in tests/fuzz-examples/; `long` (`make fuzz`, another seed
# each time) runs many more and saves the failures it finds there, to commit with the fix.
FUZZ_EXAMPLES = Path(__file__).parent / "fuzz-examples"
FUZZ_CI_EXAMPLES = 60
settings.register_profile(
    "ci", max_examples=FUZZ_CI_EXAMPLES, deadline=None, print_blob=True,
    database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(FUZZ_EXAMPLES)),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "long", max_examples=1000, deadline=None, print_blob=True, database=DirectoryBasedExampleDatabase(FUZZ_EXAMPLES),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Words the tiny tokenizer knows; anything else becomes [UNK].
VOCAB_WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda "
    "action comedy drama horror romance thriller categories the a of and film story "
    "director actor red blue green space ship love war city night day"
).split()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and a WordPiece tokenizer made here."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789().,:;'!?-")
    vocab = specials + VOCAB_WORDS + chars + [f"##{c}" for c in chars]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


@dataclass(frozen=True)
class CleanReference:
    """A clean run of the fault tests' job, made once for the session."""

    job: dict  # the job's config: inputs, matcher off, 50 users per block, the session's Ray
    run_dir: str  # the clean run, in an output root of its own: no embedding cache shared
    manifest: dict

    def write_job(self, path: Path, out: Path, **sections) -> Path:
        """The same job with its output at `out` (and `sections` replaced), written to `path`."""
        path.write_text(json.dumps({**self.job, "output": {"path": str(out)}, **sections}))
        return path


@pytest.fixture(scope="session")
def clean_reference(ray_cluster, tiny_model_dir, tmp_path_factory) -> CleanReference:
    """One clean in-process run that the crash, worker-kill and output-fault tests compare
    their runs with: they run the same job (its inputs, its config) into outputs of their own.
    The matcher is off: its training is equal across processes only up to float rounding
    (1e-6 in the scores), so its outputs could not be compared byte for byte."""
    from chatrec.config import load_config
    from pipelines.full_run import run_job
    from tests.test_refresh import catalogue, config, interaction_log, write_inputs

    root = tmp_path_factory.mktemp("clean-reference")
    items = catalogue(2)
    write_inputs(root / "data", items, interaction_log(items, 2))
    job = config(root / "data", root / "out", tiny_model_dir, history={"users_per_block": 50},
                 ray={"address": ray_cluster.get_runtime_context().gcs_address})
    path = root / "job.yaml"
    path.write_text(json.dumps(job))
    clean = run_job(load_config(path, {"output": {"run_id": "clean"}}))
    return CleanReference(job=job, run_dir=clean.run_dir, manifest=clean.manifest)


def write_parquet(path: Path, rows: list[dict] | dict, schema: pa.Schema | None = None) -> Path:
    table = pa.Table.from_pylist(rows, schema=schema) if isinstance(rows, list) else pa.table(rows)
    pq.write_table(table, path)
    return path


@pytest.fixture
def toy_catalogue(tmp_path) -> dict[str, Path]:
    return make_toy_catalogue(tmp_path)


def make_toy_catalogue(tmp_path: Path) -> dict[str, Path]:
    """Known answers: items come in pairs with identical text (so identical vectors).

    u1 saw a1 -> a2 must be first; u2 saw b1 -> b2 first; u3 saw c1 and c2 -> neither again.
    """
    items = [
        {"item_id": "a1", "title": "alpha red", "categories": ["action"], "description": "space ship"},
        {"item_id": "a2", "title": "alpha red", "categories": ["action"], "description": "space ship"},
        {"item_id": "b1", "title": "beta love", "categories": ["romance"], "description": "city night"},
        {"item_id": "b2", "title": "beta love", "categories": ["romance"], "description": "city night"},
        {"item_id": "c1", "title": "gamma war", "categories": ["drama"], "description": "the war film"},
        {"item_id": "c2", "title": "gamma war", "categories": ["drama"], "description": "the war film"},
        {"item_id": "d1", "title": "delta horror", "categories": ["horror"], "description": "green night"},
        {"item_id": "e1", "title": "epsilon comedy", "categories": ["comedy"], "description": "blue day"},
    ]
    interactions = [
        {"user_id": "u1", "item_id": "a1", "timestamp": 100},
        {"user_id": "u2", "item_id": "b1", "timestamp": 100},
        {"user_id": "u3", "item_id": "c1", "timestamp": 100},
        {"user_id": "u3", "item_id": "c2", "timestamp": 200},
        {"user_id": "u4", "item_id": "d1", "timestamp": 50},
        {"user_id": "u4", "item_id": "a1", "timestamp": 60},
    ]
    return {
        "items": write_parquet(tmp_path / "items.parquet", items),
        "interactions": write_parquet(tmp_path / "interactions.parquet", interactions),
    }
