"""MovieLens-100K: fetching, GroupLens conversion, and the demo path end to end."""

import collections
import json
import os
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from chatrec.config import load_config
from chatrec.datasets.movielens import RECBOLE_FILES, convert_grouplens, fetch_movielens_100k
from chatrec.publish import read_latest
from pipelines.full_run import run_job

DEMO_CONFIG = Path(__file__).parent.parent / "configs" / "movielens-100k.yaml"


def test_grouplens_layout_converts_to_atomic_files(tmp_path):
    src = tmp_path / "gl"
    src.mkdir()
    (src / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n")
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    (src / "u.item").write_bytes(("10|Cop Land (1997)|01-Jan-1997||http://x|" + "|".join(flags) + "\n").encode("latin-1"))
    (src / "u.user").write_text("1|24|M|technician|85711\n")
    dest = convert_grouplens(src, tmp_path / "ml")
    assert (dest / "ml-100k.item").read_text().splitlines()[1] == "10\tCop Land\t1997\tAction Comedy"
    assert (dest / "ml-100k.inter").read_text().splitlines()[0].startswith("user_id:token")
    assert not (tmp_path / "ml.partial").exists()


@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
    return fetch_movielens_100k(tmp_path_factory.mktemp("data") / "ml-100k")


@pytest.mark.slow
def test_fetch_extracts_only_the_data_files_with_known_checksums(movielens):
    assert sorted(os.listdir(movielens)) == sorted(RECBOLE_FILES)
    assert fetch_movielens_100k(movielens) == movielens  # cached: no second download


@pytest.mark.slow
def test_demo_job_on_movielens_with_minilm(ray_cluster, movielens, tmp_path):
    data = str(movielens)
    cfg = load_config(DEMO_CONFIG)
    raw = cfg.to_dict()
    raw["inputs"]["items"]["path"] = f"{data}/ml-100k.item"
    raw["inputs"]["interactions"]["path"] = f"{data}/ml-100k.inter"
    raw["inputs"]["users"]["path"] = f"{data}/ml-100k.user"
    raw["inputs"]["knowledge_graph"] = {"triples": f"{data}/ml-100k.kg", "links": f"{data}/ml-100k.link"}
    raw["output"]["path"] = str(tmp_path / "out")
    raw["matcher"]["max_epochs"] = 1  # the whole path, not the quality (see BENCHMARKS.md)
    result = run_job(load_config(None, raw))

    manifest = json.loads((Path(result.run_dir) / "manifest.json").read_text())
    assert manifest["inputs"]["items"] == {"rows": 1682, "valid": 1682}
    assert manifest["inputs"]["interactions"] == {"rows": 100000, "valid": 100000}
    assert manifest["model"]["dim"] == 384
    assert manifest["users"]["covered"] == 943
    recs = pads.dataset(os.path.join(result.run_dir, "recommendations")).to_table()
    assert recs.num_rows == manifest["outputs"]["recommendations"] == 943 * 20

    seen = collections.defaultdict(set)
    for line in (movielens / "ml-100k.inter").read_text().splitlines()[1:]:
        user, item, *_ = line.split("\t")
        seen[user].add(item)
    per_user = collections.Counter(recs.column("user_id").to_pylist())
    assert set(per_user.values()) == {20}
    assert not any(i in seen[u] for u, i in zip(recs.column("user_id").to_pylist(), recs.column("item_id").to_pylist()))
    assert all(b in seen[u] for u, b in zip(recs.column("user_id").to_pylist(), recs.column("because_item_id").to_pylist()))
    # The knowledge graph's opaque ids feed reasons ("same director as ...") but never the text;
    # rows the collaborative score carried say so.
    reasons = recs.column("reason").to_pylist()
    strategies = recs.column("strategy").to_pylist()
    assert any(r.startswith("same ") for r in reasons)
    assert "two-tower" in strategies and set(strategies) <= {"two-tower", "collaborative"}
    # A row says "often together with" exactly when recency-weighted EASE carried it.
    assert all((s == "collaborative") == r.startswith("often together with") for s, r in zip(strategies, reasons))
    assert manifest["matcher"]["epochs_run"] == 1 and 0 <= manifest["matcher"]["fusion"]["weight"] <= 1
    assert (Path(result.run_dir) / "matcher" / "model.pt").exists()
    assert read_latest(str(tmp_path / "out")).endswith(f"runs/{result.run_id}")
    assert len(manifest["examples"]) == 3


@pytest.mark.slow
def test_recency_weighted_ease_beats_popularity_on_a_movielens_split(movielens, tmp_path):
    """Split, two baselines and evaluation through the CLI, as `make demo` runs them."""
    from chatrec.cli import main

    split = tmp_path / "split"
    assert main(["split", "--interactions", str(movielens / "ml-100k.inter"), "--out", str(split),
                 "--by", "user-time", "--ratios", "0.8,0.1,0.1"]) == 0
    counts = json.loads((split / "split.json").read_text())["counts"]
    assert counts["train"]["rows"] + counts["valid"]["rows"] + counts["test"]["rows"] == 100000
    for name in ("popularity", "ease-recency"):
        assert main(["baseline", name, "--train", str(split / "train.parquet"), "--valid", str(split / "valid.parquet"),
                     "--output", str(tmp_path / name), "--json"]) == 0
    assert main(["evaluate", "--compare", str(tmp_path / "popularity"), str(tmp_path / "ease-recency"),
                 "--test", str(split / "test.parquet"), "--bootstrap", "300"]) == 0
    run = Path(read_latest(str(tmp_path / "ease-recency")))
    [compare] = run.glob("compare-*.json")
    ndcg = next(d for d in json.loads(compare.read_text())["deltas"] if d["metric"] == "ndcg@10")
    # Recency carries most of the signal on chronological splits: a large, significant gain.
    assert ndcg["users"] == 943
    assert ndcg["b"] > 0.12 and ndcg["b"] > 1.5 * ndcg["a"] and ndcg["significant"]
    assert json.loads((run / "evaluation.json").read_text())["primary"] == pytest.approx(ndcg["b"])
