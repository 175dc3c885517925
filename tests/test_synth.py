"""The synthetic data generator (chatrec.datasets.synth) and a smoke run of the benchmark harness."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from chatrec import schemas
from chatrec.cli import main
from chatrec.config import load_config
from chatrec.datasets.synth import SynthSpec, latent_structure, synthesize
from chatrec.errors import ConfigError, PublishError
from pipelines.ingest import item_texts, read_inputs

SPEC = SynthSpec(items=300, users=500, seed=3)


def read(path: Path, table: str):
    return pq.read_table(path / table)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synthesize(out, SPEC)
    return out


def test_same_seed_same_rows_other_seed_other_rows(synth, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    synthesize(again, SPEC)
    synthesize(other, SynthSpec(items=300, users=500, seed=4))
    for table in ("items", "interactions"):
        assert read(again, table).equals(read(synth, table))
        assert not read(other, table).equals(read(synth, table))


def test_small_chunks_give_several_parts_and_the_same_rows(synth, tmp_path):
    chunked = tmp_path / "chunked"
    manifest = synthesize(chunked, SynthSpec(items=300, users=500, seed=3, chunk_rows=1000))
    log_parts = sorted((chunked / "interactions").glob("*.parquet"))
    assert len(log_parts) == manifest["parts"]["interactions"] > 2
    assert all(pq.read_metadata(p).num_rows == 1000 for p in log_parts[:-1])
    assert len(list((synth / "interactions").glob("*.parquet"))) == 1
    for table in ("items", "interactions"):
        assert read(chunked, table).equals(read(synth, table))


def test_the_output_passes_the_input_contract(synth):
    cfg = load_config(None, {"inputs": {"items": str(synth / "items"), "interactions": str(synth / "interactions")}})
    inputs = read_inputs(cfg.inputs, cfg.item_text)
    manifest = json.loads((synth / "synth.json").read_text())
    assert inputs.rejects().num_rows == 0
    assert inputs.items.table.num_rows == SPEC.items == manifest["rows"]["items"]
    assert inputs.interactions.table.num_rows == manifest["rows"]["interactions"]
    assert inputs.items.table.schema.names == schemas.ITEMS.names
    assert inputs.interactions.table.schema.names == schemas.INTERACTIONS.names
    texts = item_texts(inputs, cfg.item_text).column("text").to_pylist()
    # Every part of the template is exercised: categories, a description, the attribute columns.
    assert any("Categories: " in t and "brand: " in t and "price: " in t and "language: " in t for t in texts)
    words = [len(t.split()) for t in texts]
    assert max(words) > 3 * min(words)  # descriptions of varied length


def test_every_user_is_active_and_times_run_forward(synth):
    log = read(synth, "interactions")
    users = log.column("user_id").to_pylist()
    assert len(set(users)) == SPEC.users
    assert min(Counter(users).values()) >= 3
    stamps = log.column("timestamp").to_numpy()
    same_user = np.array(users[1:]) == np.array(users[:-1])
    assert (np.diff(stamps)[same_user] >= 0).all()  # each user's rows are in time order


def test_popularity_and_activity_are_skewed(synth):
    log = read(synth, "interactions")
    per_item = np.array(sorted(Counter(log.column("item_id").to_pylist()).values(), reverse=True))
    top = max(1, SPEC.items // 100)
    assert per_item[:top].sum() / per_item.sum() > 0.05  # the top 1% of items draw > 5x their share
    per_user = np.array(list(Counter(log.column("user_id").to_pylist()).values()))
    assert per_user.max() >= 8 * np.median(per_user)  # a heavy tail of very active users


def test_users_favour_their_taste_clusters(synth):
    latent = latent_structure(SPEC)
    log = read(synth, "interactions")
    items = np.array([int(i[1:]) for i in log.column("item_id").to_pylist()])
    clusters = latent.cluster_of[items]
    users = np.array(log.column("user_id").to_pylist())
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(clusters)

    def top_share(c):
        shares = []
        for u in np.unique(users):
            mine = c[users == u]
            if len(mine) >= 10:
                shares.append(np.bincount(mine).max() / len(mine))
        return float(np.mean(shares))

    assert top_share(clusters) > 0.5
    assert top_share(clusters) > top_share(shuffled) + 0.2


def test_item_text_tells_the_cluster(synth):
    latent = latent_structure(SPEC)
    items = read(synth, "items")
    words = [set((d or "").lower().replace(".", "").split()) for d in items.column("description").to_pylist()]
    c = latent.cluster_of
    rng = np.random.default_rng(0)
    same, other = [], []
    for _ in range(2000):
        a, b = rng.integers(0, SPEC.items, 2)
        if a == b or not words[a] or not words[b]:
            continue
        overlap = len(words[a] & words[b]) / len(words[a] | words[b])
        (same if c[a] == c[b] else other).append(overlap)
    assert np.mean(same) > 2 * np.mean(other)


def test_bad_specs_and_occupied_outputs_are_refused(synth, tmp_path):
    with pytest.raises(ConfigError, match="items must be a positive integer, got 0"):
        SynthSpec(items=0, users=1)
    with pytest.raises(ConfigError, match="clusters must be between 1 and the number of items"):
        SynthSpec(items=5, users=1, clusters=6)
    with pytest.raises(PublishError, match="already exists and is not empty"):
        synthesize(synth, SPEC)
    replaced = tmp_path / "replaced"
    synthesize(replaced, SynthSpec(items=10, users=10))
    synthesize(replaced, SynthSpec(items=20, users=10), force=True)
    assert read(replaced, "items").num_rows == 20


def test_cli_writes_the_data_set(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--items", "50", "--users", "40", "--out", str(out), "--seed", "1"]) == 0
    assert "50 items" in capsys.readouterr().out
    assert (out / "items").is_dir() and (out / "interactions").is_dir() and (out / "synth.json").is_file()
    assert main(["data", "synth", "--items", "50", "--users", "40", "--out", str(out)]) == 4


def test_bench_measurement_and_report_section(tmp_path):
    from bench.measure import interleave, paired_ratio
    from bench.report import BEGIN, END, write_section

    calls = []
    seconds = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]  # the order rotates each repetition
    assert paired_ratio([1.0, 2.0], [2.0, 2.0]).median == 0.75 and len(seconds["a"]) == 3
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nhand-written\n")
    write_section(md, f"{BEGIN}\nfirst\n{END}\n")
    write_section(md, f"{BEGIN}\nsecond\n{END}\n")
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written\n") and "second" in text and "first" not in text
    md.write_text(text.replace(BEGIN, ""))  # a damaged section is refused, not duplicated
    with pytest.raises(ValueError, match="needs one of each"):
        write_section(md, f"{BEGIN}\nthird\n{END}\n")


@pytest.mark.slow
def test_bench_smoke_top_k_and_parquet(ray_cluster):
    """The harness end to end on tiny sizes: the top-K stage on Ray, its kernel, the report."""
    from bench.context import Sizes
    from bench.report import render
    from bench.run import run

    sizes = Sizes(topk_items=300, topk_users=200, topk_reps=1)
    results = run(sizes, sections=("topk", "parquet"))
    topk = results["sections"]["topk"]
    assert topk["users"] == 200 and topk["seconds"]["stage"]["median"] > topk["seconds"]["faiss"]["median"] > 0
    assert all(0 <= row["recall"] <= 1 for row in topk["ann"]["rows"])
    assert results["sections"]["parquet"]["writers"]["driver, zstd"]["bytes_per_user"] > 0
    section = render(results)
    assert "### Top-K stage" in section and "Machine: " in section
