from pathlib import Path

import pytest

from chatrec.config import DEFAULT_MODEL, load_config
from chatrec.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults_and_paths_relative_to_the_file(tmp_path):
    cfg = load_config(write(tmp_path, "inputs:\n  items: data/items.parquet\n  interactions: s3://b/log/\n"))
    assert cfg.inputs.items.path == str(tmp_path / "data" / "items.parquet")
    assert cfg.inputs.interactions.path == "s3://b/log/"  # URIs are left alone
    assert cfg.retrieval.top_k == 20
    assert cfg.encoder.model == DEFAULT_MODEL


def test_unknown_keys_are_rejected_by_name(tmp_path):
    path = write(tmp_path, "inputs: {items: i.parquet, interactions: l.parquet}\nretrieval: {topk: 5}\nfoo: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key 'retrieval.topk'" in str(err.value)
    assert "unknown key 'foo'" in str(err.value)


def test_invalid_values_name_key_and_value(tmp_path):
    path = write(tmp_path, "inputs: {items: i.parquet, interactions: l.parquet}\nretrieval: {top_k: 0}\n")
    with pytest.raises(ConfigError, match=r"retrieval.top_k: .*greater than or equal to 1.*got 0"):
        load_config(path)


def test_missing_inputs_are_named():
    with pytest.raises(ConfigError, match="missing required key 'inputs'"):
        load_config(None, {})


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "inputs: {items: i.parquet, interactions: l.parquet}\nretrieval: {top_k: 5}\n")
    cfg = load_config(path, {"retrieval": {"top_k": 7}, "output": {"path": "elsewhere"}})
    assert cfg.retrieval.top_k == 7
    assert cfg.output.path == "elsewhere"
    assert cfg.inputs.items.path.endswith("i.parquet")


def test_run_id_must_be_a_plain_name():
    with pytest.raises(ConfigError, match="run_id"):
        load_config(None, {"inputs": {"items": "i", "interactions": "l"}, "output": {"run_id": "../x"}})


def test_config_hash_ignores_run_id_but_not_settings():
    base = {"inputs": {"items": "i", "interactions": "l"}}
    a = load_config(None, {**base, "output": {"run_id": "one"}})
    b = load_config(None, {**base, "output": {"run_id": "two"}})
    c = load_config(None, {**base, "retrieval": {"top_k": 3}})
    assert a.sha256() == b.sha256() != c.sha256()


def test_demo_config_is_valid():
    cfg = load_config(Path(__file__).parent.parent / "configs" / "movielens-100k.yaml")
    assert cfg.inputs.items.rename["movie_title"] == "title"
    assert cfg.inputs.knowledge_graph is not None


def test_path_flag_keeps_the_files_format_and_rename(tmp_path):
    from chatrec.cli import _run_overrides, build_parser

    path = write(tmp_path, "inputs:\n  items: {path: a.item, rename: {movie_title: title}}\n  interactions: l.inter\n")
    args = build_parser().parse_args(["run", "--items", "/data/b.item", "--top-k", "5"])
    cfg = load_config(path, _run_overrides(args))
    assert cfg.inputs.items.path == "/data/b.item"
    assert cfg.inputs.items.rename == {"movie_title": "title"}
    assert cfg.retrieval.top_k == 5


def test_errors_wrapped_by_ray_workers_keep_their_exit_code():
    from chatrec.entrypoint import chatrec_cause as _chatrec_cause
    from chatrec.errors import ModelLoadError

    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("worker failed")
            self.cause = cause

    inner = ModelLoadError("no weights")
    outer = RuntimeError("dataset failed")
    outer.__cause__ = Wrapped(inner)
    assert _chatrec_cause(outer) is inner
    assert _chatrec_cause(RuntimeError("bug")) is None


def test_matcher_settings_that_contradict_the_rest_are_refused():
    base = {"inputs": {"items": "i", "interactions": "l"}}
    with pytest.raises(ConfigError, match=r"history.max_items \(5\) is below matcher.max_history \(20\)"):
        load_config(None, {**base, "history": {"max_items": 5}})
    with pytest.raises(ConfigError, match="history.profile_weight blends profiles"):
        load_config(None, {**base, "history": {"profile_weight": 0.3}})
    with pytest.raises(ConfigError, match=r"matcher.dim \(10\) must be divisible by matcher.heads \(4\)"):
        load_config(None, {**base, "matcher": {"dim": 10, "heads": 4}})
    off = load_config(None, {**base, "history": {"max_items": 5, "profile_weight": 0.3}, "matcher": {"enabled": False}})
    assert off.history.profile_weight == 0.3
