"""presso.compress structured pruning: ZipLM's greedy OBS removal of FFN channels and attention
heads, checked against a brute-force least-squares reference and on real tiny models."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from presso.compress import (
    StructuredWeight,
    hessian_hooks,
    obs_prune_channels,
    obs_prune_heads,
    obs_prune_structures,
    structure_columns,
)
from presso.models import load_model

DAMP = 0.01


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matrices: on a loaded machine intra-op threads only wait on each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _correlated(tokens: int, features: int, seed: int) -> torch.Tensor:
    """Inputs living mostly in a few directions (singular values decaying as exp(-k/4))."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, features, generator=gen, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(features, features, generator=gen, dtype=torch.float64))
    return z @ torch.diag(torch.exp(-torch.arange(features) / 4.0)).double() @ basis.T


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / x.shape[0] * x.double().T @ x.double()


def _brute_force(
    w: torch.Tensor, x: torch.Tensor, group_size: int, damp: float
) -> dict[int, tuple[list[int], torch.Tensor, float]]:
    """Greedy removal by exhaustive least squares: at each step try every remaining structure,
    re-fit the kept columns to the dense outputs with lstsq, keep the best.

    The damping ``λI`` of the Hessian is data too: ``X`` gets ``sqrt(nλ/2) I`` as extra rows,
    so that ``(2/n) X_augᵀ X_aug = H + λI``. Returns {kept count: (kept, weight, error)} with
    error ``||X_aug ΔWᵀ||² / n`` (= ``½ tr(ΔW (H + λI) ΔWᵀ)``).
    """
    n, in_features = x.shape
    lam = damp * float(torch.diagonal(_hessian(x)).mean())
    xa = torch.cat([x.double(), math.sqrt(n * lam / 2) * torch.eye(in_features).double()])
    y = xa @ w.double().T
    alive = list(range(in_features // group_size))
    results = {len(alive): (list(alive), w.double().clone(), 0.0)}
    while alive:
        best = None
        for s in alive:
            keep = [t for t in alive if t != s]
            cols = structure_columns(torch.tensor(keep, dtype=torch.int64), group_size)
            full = torch.zeros_like(w, dtype=torch.float64)
            if keep:
                full[:, cols] = torch.linalg.lstsq(xa[:, cols], y).solution.T
            err = float((xa @ (w.double() - full).T).pow(2).sum()) / n
            if best is None or err < best[2]:
                best = (keep, full, err)
        assert best is not None
        alive = best[0]
        results[len(alive)] = best
    return results


@pytest.mark.parametrize(("group_size", "tokens"), [(1, 48), (3, 48), (2, 8)])
def test_greedy_obs_matches_brute_force_least_squares(group_size, tokens):
    out, in_features = 5, 12
    w = torch.randn(out, in_features, generator=torch.Generator().manual_seed(3))
    x = _correlated(tokens, in_features, seed=4)  # tokens=8 < 12 columns: rank-deficient X
    levels = list(range(in_features // group_size + 1))
    fast = obs_prune_structures(w, _hessian(x), levels, group_size=group_size, damp=DAMP)
    slow = _brute_force(w, x, group_size, DAMP)
    for level, result in zip(levels, fast):
        keep, full, err = slow[level]
        assert result.kept.tolist() == keep, level
        assert result.shape == (out, level * group_size)
        torch.testing.assert_close(result.masked().double(), full, rtol=1e-4, atol=1e-5)
        assert result.error == pytest.approx(err, rel=1e-6, abs=1e-9)


def test_predicted_error_is_the_output_error_and_keeping_all_is_the_identity():
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
    x = _correlated(200, 24, seed=1)
    h = _hessian(x)
    whole, half = obs_prune_structures(w, h, [6, 3], group_size=4, damp=DAMP)
    assert torch.equal(whole.weight, w) and whole.error == 0.0
    assert whole.kept.tolist() == list(range(6))
    dw = w.double() - half.masked().double()
    damped = h + DAMP * torch.diagonal(h).mean() * torch.eye(24, dtype=torch.float64)
    assert half.error == pytest.approx(0.5 * float(((dw @ damped) * dw).sum()), rel=1e-5)
    # The undamped part is the output error on the calibration inputs, ||ΔW Xᵀ||² / n.
    measured = float((dw @ x.T).pow(2).sum()) / x.shape[0]
    assert 0 < measured <= half.error
    rebuilt = StructuredWeight.from_tensors(half.tensors(), half.meta())
    assert torch.equal(rebuilt.masked(), half.masked()) and rebuilt.error == half.error


def test_channels_in_chunks_cost_what_one_at_a_time_costs(monkeypatch):
    """Above 128 channels a greedy step removes 1/64 of them at once (with their exact joint
    update): the error it predicts stays within 1% of ZipLM's one-at-a-time greedy."""
    import presso.compress._structured as structured

    w = torch.randn(32, 384, generator=torch.Generator().manual_seed(7))
    h = _hessian(_correlated(1024, 384, seed=8) + 0.1 * _correlated(1024, 384, seed=9))
    chunked = obs_prune_channels(w, h, [288, 192, 96])
    monkeypatch.setattr(structured, "CHUNK", 0.0)  # one channel a step
    exact = obs_prune_channels(w, h, [288, 192, 96])
    for a, b in zip(chunked, exact):
        assert a.error == pytest.approx(b.error, rel=0.01)
        assert a.kept.numel() == b.kept.numel()
        assert len(set(a.kept.tolist()) & set(b.kept.tolist())) >= 0.8 * b.kept.numel()


def test_a_chunked_level_does_not_depend_on_the_levels_built_beside_it():
    """A level inside a chunk is branched off the level-independent schedule, so asking for
    more levels in the same pass leaves its weights bit for bit as they were."""
    w = torch.randn(16, 384, generator=torch.Generator().manual_seed(3))
    h = _hessian(_correlated(1024, 384, seed=4) + 0.1 * _correlated(1024, 384, seed=5))
    (alone,) = obs_prune_channels(w, h, [200])
    with_others = obs_prune_channels(w, h, [381, 300, 203, 200, 150])
    assert torch.equal(with_others[3].weight, alone.weight)
    assert torch.equal(with_others[3].kept, alone.kept)
    assert with_others[3].error == alone.error
    kept = [set(r.kept.tolist()) for r in with_others]
    assert all(a >= b for a, b in zip(kept, kept[1:]))  # still nested


def test_levels_in_any_order_are_prefixes_of_one_greedy_order():
    w = torch.randn(8, 20, generator=torch.Generator().manual_seed(5))
    h = _hessian(_correlated(100, 20, seed=6))
    results = obs_prune_channels(w, h, [5, 15, 10, 15])
    assert [r.kept.numel() for r in results] == [5, 15, 10, 15]
    assert set(results[0].kept.tolist()) <= set(results[2].kept.tolist())
    assert set(results[2].kept.tolist()) <= set(results[1].kept.tolist())
    assert results[0].error >= results[2].error >= results[1].error


# --- real tiny models ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny-llama").model.eval()


@pytest.fixture(scope="module")
def tiny_bert():
    return load_model("tiny-bert").model.eval()


def _tokens(model: nn.Module, seed: int, batch: int = 8, seq: int = 32) -> torch.Tensor:
    vocab = model.config.vocab_size
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _inputs_of(model: nn.Module, module: nn.Linear, ids: torch.Tensor) -> torch.Tensor:
    """The inputs ``[tokens, in]`` that ``module`` sees on ``ids``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat([s.reshape(-1, module.in_features) for s in seen]).double()


def _calibration_hessian(model: nn.Module, module: nn.Linear, ids: torch.Tensor) -> torch.Tensor:
    accumulators, remove = hessian_hooks({"m": module})
    with torch.no_grad():
        model(ids)
    remove()
    return accumulators["m"].hessian


def _relative_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    num = ((w.double() - w_hat.double()) @ x.T).pow(2).sum()
    return float(num / (w.double() @ x.T).pow(2).sum())


def _without_update(w: torch.Tensor, kept_cols: torch.Tensor) -> torch.Tensor:
    masked = torch.zeros_like(w)
    masked[:, kept_cols] = w[:, kept_cols]
    return masked


@pytest.mark.parametrize("what", ["channels", "heads"])
def test_obs_beats_plain_and_magnitude_removal_on_held_out_inputs(tiny_llama, what):
    layer = tiny_llama.model.layers[1]
    linear = layer.mlp.down_proj if what == "channels" else layer.self_attn.o_proj
    w = linear.weight.detach()
    h = _calibration_hessian(tiny_llama, linear, _tokens(tiny_llama, seed=0, batch=64, seq=64))
    held_out = _inputs_of(tiny_llama, linear, _tokens(tiny_llama, seed=1, batch=8, seq=64))
    if what == "channels":
        (result,) = obs_prune_channels(w, h, [64])  # 128 -> 64
    else:
        (result,) = obs_prune_heads(w, h, [2], num_heads=4, num_kv_heads=2)  # one KV group of 2
    group = result.group_size
    norms = w.double().pow(2).reshape(w.shape[0], -1, group).sum(dim=(0, 2))
    by_magnitude = torch.sort(torch.argsort(norms, descending=True)[: result.kept.numel()]).values

    obs = _relative_error(w, result.masked(), held_out)
    plain = _relative_error(w, _without_update(w, result.kept_columns()), held_out)
    magnitude = _relative_error(
        w, _without_update(w, structure_columns(by_magnitude, group)), held_out
    )
    # A random-weight model's FFN channels are nearly uncorrelated, so there the update gains
    # only a few percent over removing OBS's choice (0.362 vs 0.374 at 4096 calibration tokens;
    # it overfits below ~2000); its choice beats magnitude's by ~15%. Head outputs are mixed by
    # attention, correlated, and the update pays more.
    margin = 0.99 if what == "channels" else 0.9
    assert obs < margin * plain, (obs, plain)
    assert obs < 0.9 * magnitude, (obs, magnitude)


def _sliced(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    """A real smaller Linear: rows (outputs) and/or columns (inputs) of ``linear`` kept."""
    w = linear.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    bias = linear.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        new.weight.copy_(w)
        if bias:
            new.bias.copy_(linear.bias[rows] if rows is not None else linear.bias)
    return new


def _set_weight(linear: nn.Linear, weight: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight = nn.Parameter(weight.clone())
        linear.in_features = weight.shape[1]


@torch.no_grad()
def test_sliced_llama_equals_the_masked_and_updated_model(tiny_llama):
    ids = _tokens(tiny_llama, seed=2)
    pruned, masked = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    for i, (p, m) in enumerate(zip(pruned.model.layers, masked.model.layers)):
        h_mlp = _calibration_hessian(tiny_llama, tiny_llama.model.layers[i].mlp.down_proj, ids)
        h_att = _calibration_hessian(tiny_llama, tiny_llama.model.layers[i].self_attn.o_proj, ids)
        (ffn,) = obs_prune_channels(p.mlp.down_proj.weight, h_mlp, [128 - 24 * (i + 1)])
        (att,) = obs_prune_heads(
            p.self_attn.o_proj.weight, h_att, [2 * (i % 2) + 2], num_heads=4, num_kv_heads=2
        )
        rows = ffn.kept_columns()
        p.mlp.gate_proj = _sliced(p.mlp.gate_proj, rows, None)
        p.mlp.up_proj = _sliced(p.mlp.up_proj, rows, None)
        _set_weight(p.mlp.down_proj, ffn.weight)
        _set_weight(m.mlp.down_proj, ffn.masked())
        head_dim = p.self_attn.head_dim
        kv_rows = structure_columns(att.kept, head_dim)
        p.self_attn.q_proj = _sliced(p.self_attn.q_proj, att.kept_columns(), None)
        p.self_attn.k_proj = _sliced(p.self_attn.k_proj, kv_rows, None)
        p.self_attn.v_proj = _sliced(p.self_attn.v_proj, kv_rows, None)
        _set_weight(p.self_attn.o_proj, att.weight)
        _set_weight(m.self_attn.o_proj, att.masked())
        assert p.mlp.up_proj.weight.shape == (128 - 24 * (i + 1), 64)
        assert p.self_attn.k_proj.weight.shape[0] == att.kept.numel() * head_dim
    got = pruned(ids).logits
    want = masked(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(want, tiny_llama(ids).logits, atol=1e-4)  # something was removed


@torch.no_grad()
def test_sliced_bert_equals_the_masked_and_updated_model(tiny_bert):
    ids = _tokens(tiny_bert, seed=3)
    pruned, masked = copy.deepcopy(tiny_bert), copy.deepcopy(tiny_bert)
    for i, (p, m) in enumerate(zip(pruned.encoder.layer, masked.encoder.layer)):
        dense = tiny_bert.encoder.layer[i]
        h_mlp = _calibration_hessian(tiny_bert, dense.output.dense, ids)
        h_att = _calibration_hessian(tiny_bert, dense.attention.output.dense, ids)
        (ffn,) = obs_prune_channels(p.output.dense.weight, h_mlp, [100 - 30 * i])
        (att,) = obs_prune_heads(p.attention.output.dense.weight, h_att, [3 - i], num_heads=4)
        p.intermediate.dense = _sliced(p.intermediate.dense, ffn.kept_columns(), None)
        _set_weight(p.output.dense, ffn.weight)
        _set_weight(m.output.dense, ffn.masked())
        rows = att.kept_columns()
        sa = p.attention.self
        sa.query, sa.key, sa.value = (
            _sliced(lin, rows, None) for lin in (sa.query, sa.key, sa.value)
        )
        _set_weight(p.attention.output.dense, att.weight)
        _set_weight(m.attention.output.dense, att.masked())
        # In the masked model the removed heads still run; o_proj's zero columns discard them.
    got = pruned(ids).last_hidden_state
    want = masked(ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --- bad input -------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message():
    w = torch.randn(4, 12)
    h = _hessian(_correlated(30, 12, seed=0))
    with pytest.raises(ValueError, match=r"cannot keep 13 .* has 12"):
        obs_prune_channels(w, h, [13])
    with pytest.raises(ValueError, match=r"cannot keep -1"):
        obs_prune_channels(w, h, [-1])
    with pytest.raises(ValueError, match=r"cannot keep 5 structures .* has 4"):
        obs_prune_structures(w, h, [5], group_size=3)
    with pytest.raises(ValueError, match="group_size 5 does not divide in_features 12"):
        obs_prune_structures(w, h, [1], group_size=5)
    with pytest.raises(ValueError, match="not divisible by num_heads 5"):
        obs_prune_heads(w, h, [1], num_heads=5)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        obs_prune_heads(w, h, [2], num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="whole groups of 3 are removed; use a multiple of 3"):
        obs_prune_heads(w, h, [4], num_heads=6, num_kv_heads=2)
    with pytest.raises(ValueError, match="cannot keep 9 query heads: the attention has 6"):
        obs_prune_heads(w, h, [9], num_heads=6, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"hessian must be \[12, 12\]"):
        obs_prune_channels(w, h[:6, :6], [6])
    assert obs_prune_channels(w, h, []) == []
