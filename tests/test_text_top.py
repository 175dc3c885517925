"""Finetuning the text encoder's top layers with the matcher (matcher.text_encoder: finetune)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chatrec.encoder import TextEncoder
from chatrec.errors import ConfigError
from chatrec.matcher.model import TextTop
from chatrec.matcher.sequences import build_sequences
from chatrec.matcher.token_states import encode_token_states
from chatrec.matcher.training import (
    SeenPairs,
    TrainingData,
    build_model,
    build_optimizer,
    finetuned_text,
    item_vectors,
    run_epoch,
    text_vectors,
    tower_weights,
)
from tests.test_matcher import PARAMS, assert_b_follows_a, pairs_log

TEXTS = ["action space ship", "a", "love story of the city night (1995)", "red blue green war film director actor"]


def _states(model_dir, texts, top_layers):
    return encode_token_states(model=str(model_dir), fingerprint=None, texts=texts, max_length=32,
                               top_layers=top_layers, batch_size=3)


@pytest.mark.parametrize("top_layers", [1, 2])
def test_the_pretrained_top_reproduces_the_embedding_stages_vectors(tiny_model_dir, top_layers):
    frozen = TextEncoder(model=str(tiny_model_dir), fingerprint=None, max_length=32, batch_size=8).encode(TEXTS)
    states = _states(tiny_model_dir, TEXTS, top_layers)
    assert states.states.dtype == np.float16 and states.offsets[-1] == len(states.states)
    top = TextTop.from_pretrained(tiny_model_dir, top_layers)
    vectors = text_vectors(top, states, chunk=3).numpy()  # (4, 32), in two chunks of different padding
    # float16 states: equal up to their rounding.
    assert np.abs(vectors - frozen).max() < 1e-3


def test_more_top_layers_than_the_encoder_has_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match=r"matcher.finetune_layers \(3\) is more than the encoder's 2 layers"):
        _states(tiny_model_dir, TEXTS, 3)


def test_token_states_too_large_for_the_workers_are_refused(tiny_model_dir, monkeypatch):
    from chatrec.matcher import token_states

    monkeypatch.setattr(token_states, "MAX_STATE_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"would keep \d+ token states of 32 values.*encoder.max_length"):
        _states(tiny_model_dir, TEXTS, 1)


def test_an_encoder_outside_the_bert_family_is_refused_by_name(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32)
    DistilBertModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="DistilBertModel is not one: use text_encoder: frozen"):
        TextTop.from_pretrained(tmp_path, 1)


def test_the_matcher_learns_through_a_finetuned_top_and_the_top_moves(tiny_model_dir):
    log, items = pairs_log()
    texts = [f"{'action' if item[0] == 'a' else 'drama'} film {item}" for item in items]
    states = _states(tiny_model_dir, texts, 1)
    frozen = TextEncoder(model=str(tiny_model_dir), fingerprint=None, max_length=32, batch_size=8).encode(texts)
    seq = build_sequences(log, {item: r for r, item in enumerate(items)}, len(items))
    data = TrainingData.build(frozen, seq, {}, token_states=states)
    params = {**PARAMS, "text_encoder": {"mode": "finetune", "layers": 1, "lr": 1e-3}}
    top = TextTop.from_pretrained(tiny_model_dir, 1)
    pretrained = {k: v.clone() for k, v in top.state_dict().items()}
    torch.manual_seed(0)
    model = build_model(n_items=len(items), text_dim=32, params=params, text_top=top)
    model.has_id.copy_(torch.from_numpy(data.has_id))
    optimizer = build_optimizer(model, params)
    assert [g["lr"] for g in optimizer.param_groups] == [PARAMS["lr"], 1e-3]  # the top learns slower
    text, seen, log_q = torch.from_numpy(data.text), SeenPairs(seq), torch.from_numpy(data.log_q)
    losses = [run_epoch(model, optimizer, data, text, seq.examples(), batch_size=64, max_history=4,
                        rng=np.random.default_rng(epoch), seen_keys=seen, log_q=log_q) for epoch in range(40)]
    assert losses[-1] < 0.5 * losses[0]
    moved = model.state_dict()
    assert any(not torch.equal(moved[f"text_top.{k}"], v) for k, v in pretrained.items())

    # Scoring as the pipeline does: the towers alone, over the text the finetuned top gives.
    towers = build_model(n_items=len(items), text_dim=32, params=params)
    towers.load_state_dict(tower_weights(moved))
    tuned_text = torch.from_numpy(finetuned_text(moved, states))  # (n_items, 32)
    assert not np.allclose(tuned_text.numpy(), frozen, atol=1e-3)
    assert_b_follows_a(towers, item_vectors(towers, tuned_text), items)
