import numpy as np
import pyarrow as pa
import pytest

from chatrec import schemas
from chatrec.config import KnowledgeGraphInput
from chatrec.encoder import TextEncoder, count_truncated
from chatrec.item_text import render_item_text
from chatrec.knowledge_graph import is_opaque, load_item_knowledge, relation_label
from chatrec.model_loading import model_fingerprint, resolve_model_dir
from chatrec.errors import ModelLoadError


def items_table(rows):
    base = {"year": None, "categories": None, "description": None, "attributes": []}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=schemas.ITEMS)


def test_template_v1_renders_every_part_and_is_deterministic():
    items = items_table([
        {"item_id": "1", "title": "Heat", "year": "1995", "categories": ["Crime", "Drama"],
         "description": "A heist", "attributes": ["studio: Warner", "runtime: 170"]},
        {"item_id": "2", "title": "Plain"},
    ])
    a, b = render_item_text(items), render_item_text(items)
    assert a.equals(b)
    texts = a.column("text").to_pylist()
    assert texts[0] == "Heat (1995). Categories: Crime, Drama. A heist. studio: Warner. runtime: 170."
    assert texts[1] == "Plain."
    assert a.column("row").to_pylist() == [0, 1]
    assert len(set(a.column("text_sha256").to_pylist())) == 2


def test_knowledge_graph_readable_facts_become_text_opaque_ids_do_not(tmp_path):
    (tmp_path / "x.kg").write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        "e1\tfilm.film.directed_by\tm.0abc1\n"
        "e1\tfilm.film.directed_by_name\tSteven Spielberg\n"
        "e2\tfilm.film.directed_by\tm.0abc1\n"
    )
    (tmp_path / "x.link").write_text("item_id:token\tentity_id:token\n1\te1\n2\te2\n")
    kg = load_item_knowledge(KnowledgeGraphInput(triples=str(tmp_path / "x.kg"), links=str(tmp_path / "x.link")))
    text = render_item_text(items_table([{"item_id": "1", "title": "Jaws"}, {"item_id": "2", "title": "Duel"}]), kg)
    assert text.column("text").to_pylist() == ["Jaws. directed by name: Steven Spielberg.", "Duel."]
    assert "m.0abc1" not in " ".join(text.column("text").to_pylist())
    assert kg.entity_items == {"directed by\tm.0abc1": 2}


@pytest.mark.parametrize("value,opaque", [("m.0bln8", True), ("Q42", True), ("123", True), ("Tom Hanks", False), ("English", False)])
def test_opaque_ids(value, opaque):
    assert is_opaque(value) is opaque


def test_relation_label():
    assert relation_label("film.film.directed_by") == "directed by"


def make_encoder(model_dir, **kw):
    args = dict(model=str(model_dir), fingerprint=model_fingerprint(model_dir), max_length=16, batch_size=2)
    return TextEncoder(**{**args, **kw})


def test_encoder_unit_vectors_independent_of_batching_and_order(tiny_model_dir):
    enc = make_encoder(tiny_model_dir)
    texts = ["alpha", "beta gamma delta epsilon zeta", "the red space ship", "love"]
    batched = enc.encode(texts)  # (4, 32), length-sorted inside
    single = np.stack([enc.encode([t])[0] for t in texts])
    assert batched.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_encoder_truncates_on_token_boundary(tiny_model_dir):
    enc = make_encoder(tiny_model_dir, max_length=8)
    long = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    cut = "alpha beta gamma delta epsilon zeta"  # 6 words + [CLS] + [SEP] = 8 tokens
    np.testing.assert_allclose(enc.encode([long]), enc.encode([cut]), atol=1e-6)
    assert count_truncated(str(tiny_model_dir), [long, cut], 8) == 1


def test_encoder_output_schema(tiny_model_dir):
    schema = schemas.item_embeddings(32)
    enc = make_encoder(tiny_model_dir, keep_columns=("item_id", "text_sha256"), constants={"model_fingerprint": "f"}, output_schema=schema)
    out = enc(pa.table({"item_id": ["1", "2"], "text": ["alpha", "beta"], "text_sha256": ["h1", "h2"]}))
    assert out.schema == schema
    assert out.column("model_fingerprint").to_pylist() == ["f", "f"]


def test_model_fingerprint_tracks_weights(tiny_model_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_fingerprint(copy) == model_fingerprint(tiny_model_dir)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("32", "33", 1))
    assert model_fingerprint(copy) != model_fingerprint(tiny_model_dir)


def test_encoder_refuses_different_weights(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="differs from the driver's"):
        make_encoder(tiny_model_dir, fingerprint="0" * 16)


def test_model_spec_resolution(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_dir("./no/such/dir")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "m"))
    assert (resolve_model_dir("sentence-transformers/all-MiniLM-L6-v2") / "config.json").is_file()
