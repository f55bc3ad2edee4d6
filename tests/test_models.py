"""Model handles: units, in-place weight swaps, fingerprints, loading errors."""

from __future__ import annotations

import pytest
import torch

from presso.errors import PressoError
from presso.models import load_model


def test_tiny_llama_units_and_forward() -> None:
    h = load_model("tiny-llama")
    assert h.kind == "causal-lm"
    assert len(h.units) == 4 * 7  # q k v o gate up down per block
    assert [u.block for u in h.units] == sorted(u.block for u in h.units)
    u = h.units[0]
    assert u.name == "model.layers.0.self_attn.q_proj" and u.params == u.shape[0] * u.shape[1]
    ids = torch.randint(0, 1000, (2, 16))
    assert h.forward(ids).shape == (2, 16, h.tokenizer.vocab_size)


def test_set_weight_swaps_in_place_and_restores() -> None:
    h = load_model("tiny-llama")
    ids = torch.randint(0, 1000, (1, 16))
    dense = h.forward(ids)
    name = h.units[3].name
    model_param = h.linear(name).weight
    h.set_weight(name, torch.zeros_like(h.dense_weight(name)))
    assert h.linear(name).weight is model_param  # same Parameter, new data: no model copy
    assert not torch.allclose(h.forward(ids), dense)
    h.restore_dense()
    assert torch.equal(h.forward(ids), dense)
    with pytest.raises(ValueError, match="weight"):
        h.set_weight(name, torch.zeros(3, 3))


def test_bert_encoder_units() -> None:
    h = load_model("tiny-bert")
    assert h.kind == "encoder"
    assert len(h.units) == 3 * 6
    out = h.forward(torch.randint(0, 1000, (2, 8)))
    assert out.shape == (2, 8, 64)


def test_identity_follows_weights() -> None:
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    assert a.identity == b.identity  # same seed, same weights
    assert a.identity != load_model("tiny-bert").identity


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(PressoError, match="neither a built-in model"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PressoError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_local_hf_folder_loads_as_the_same_model(tmp_path) -> None:
    tiny = load_model("tiny-llama")
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    folder = load_model(str(tmp_path / "m"))
    assert folder.kind == "causal-lm"
    assert folder.unit_names == tiny.unit_names
    ids = torch.randint(0, 1000, (1, 12))
    assert torch.allclose(folder.forward(ids), tiny.forward(ids), atol=1e-5)

    bert = load_model("tiny-bert")
    bert.model.save_pretrained(tmp_path / "b")
    bert.tokenizer.save_pretrained(tmp_path / "b")
    assert load_model(str(tmp_path / "b")).kind == "encoder"
