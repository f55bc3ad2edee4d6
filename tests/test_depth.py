"""Dropping blocks and sublayers: the evaluator's skip equals a physically shorter model, which
still generates correctly with its KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import Request
from presso.surgery import drop_blocks

from .conftest import tiny_experiment


def _setup(**space: object) -> Setup:
    exp = tiny_experiment(space={"kind": "depth", "mean_bits": None, **space})
    s = Setup(Experiment.model_validate(exp))
    s.prepare()
    return s


def test_depth_space_and_skip_equal_a_shorter_model() -> None:
    s = _setup(dropped=1)
    space = s.space
    assert [d.kind for d in space.dims] == ["depth"] * 4
    config = (1, 0, 1, 1)  # drop block 1
    assert space.is_feasible(config) and not space.is_feasible((1, 1, 1, 1))
    ev = s.evaluator()
    ev.apply(config)
    ids = s.data.calibration[:2]
    skipped = s.handle.forward(ids)

    shorter = copy.deepcopy(s.handle.model)
    drop_blocks(shorter, s.handle.blocks_prefix, [1])
    assert shorter.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in shorter.model.layers] == [0, 1, 2]
    with torch.no_grad():
        physical = shorter(input_ids=ids, use_cache=False).logits
    assert torch.allclose(skipped, physical, atol=1e-5)

    # The shorter model generates with its KV cache exactly as without it.
    prompt = ids[:1, :8]
    with torch.no_grad():
        cached = shorter.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = shorter.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)

    # Undropping restores the dense model; reuse of cached prefixes stays exact with drops.
    ev.apply((1, 1, 1, 1))
    assert torch.allclose(s.handle.forward(ids), s.handle.model(input_ids=ids).logits)
    fresh = s.evaluator()
    fresh._cache.max_bytes = 0
    for c in [(1, 1, 0, 1), (1, 1, 1, 0), (0, 1, 1, 1)]:
        r = Request(c, tokens=128, sample_seed=2)
        assert ev.evaluate(r).fitness == pytest.approx(fresh.evaluate(r).fitness, rel=1e-6)
    assert ev.evaluate(Request((1, 0, 1, 1))).metrics["dropped"] == 1


def test_sublayer_drop_zeroes_attention_or_mlp() -> None:
    s = _setup(dropped=2, granularity="sublayer")
    space = s.space
    assert [d.target.rsplit(".", 1)[-1] for d in space.dims[:2]] == ["self_attn", "mlp"]
    ev = s.evaluator()
    kl_attn = ev.evaluate(Request((0, 1, 0, 1, 1, 1, 1, 1))).fitness  # attention of blocks 0, 1
    kl_mlp = ev.evaluate(Request((1, 0, 1, 0, 1, 1, 1, 1))).fitness  # MLP of blocks 0, 1
    assert kl_attn > 0 and kl_mlp > 0 and kl_attn != kl_mlp
    # dropping an MLP equals zeroing its down projection
    ev.apply((1, 0, 1, 1, 1, 1, 1, 1))
    ids = s.data.calibration[:1]
    dropped = s.handle.forward(ids)
    ev.apply((1,) * 8)
    name = "model.layers.0.mlp.down_proj"
    s.handle.set_weight(name, torch.zeros_like(s.handle.dense_weight(name)))
    assert torch.allclose(dropped, s.handle.forward(ids), atol=1e-6)
    s.handle.restore_dense()

    # With block 0's attention dropped (its KV-cache slot never written) the model still
    # generates with its cache exactly as without it: positions and layer indices hold.
    ev.apply((0, 1, 1, 0, 1, 1, 1, 1))
    prompt = ids[:, :8]
    with torch.no_grad():
        cached = s.handle.model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = s.handle.model.generate(
            prompt, max_new_tokens=6, do_sample=False, use_cache=False
        )
    assert torch.equal(cached, uncached)


def test_bert_block_drop() -> None:
    exp = tiny_experiment(
        model="tiny-bert", space={"kind": "depth", "mean_bits": None, "dropped": 1}
    )
    s = Setup(Experiment.model_validate(exp))
    s.prepare()
    ev = s.evaluator()
    assert ev.evaluate(Request((1, 0, 1))).fitness > 0
    assert ev.evaluate(Request((1, 1, 1))).fitness == pytest.approx(0, abs=1e-6)


def test_a_new_evaluator_restores_blocks_another_left_dropped() -> None:
    """The sensitivity table's evaluator may leave a block skipped; the next evaluator of the
    same model must not inherit it."""
    s = _setup(dropped=1)
    ids = s.data.calibration[:2]
    dense = s.handle.forward(ids)
    s.evaluator().apply((0, 1, 1, 1))
    assert not torch.allclose(s.handle.forward(ids), dense)
    s.evaluator().apply((1, 1, 1, 1))
    assert torch.allclose(s.handle.forward(ids), dense)
    s.evaluator().apply((1, 1, 0, 1))  # a fresh evaluator drops what its config drops
    other = s.evaluator()
    other.apply((1, 1, 0, 1))
    assert not torch.allclose(s.handle.forward(ids), dense)
