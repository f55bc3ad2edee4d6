"""presso.compress: the quantization grid, RTN, GPTQ, calibration Hessians and the operators."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from presso.compress import (
    HessianAccumulator,
    Operator,
    QuantizedWeight,
    QuantSpec,
    _base,
    gptq_quantize,
    hessian_hooks,
    make_operator,
    quantize_rtn,
    relative_output_error,
)

OUT, IN = 64, 128


def _weight(seed: int = 0) -> torch.Tensor:
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed))


def _correlated_inputs(seed: int = 1, tokens: int = 1024) -> torch.Tensor:
    """X = Z A: inputs whose Hessian is far from diagonal, as in real activations."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, IN, generator=gen)
    a = torch.randn(IN, IN, generator=gen) / IN**0.5
    return z @ a


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / x.shape[0] * x.double().T @ x.double()


def _output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w.double() - w_hat.double()) @ x.double().T).pow(2).sum())


# --- the grid and RTN -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_codes_in_range_and_nearest_on_grid(bits, group_size, symmetric):
    spec = QuantSpec(bits, group_size, symmetric)
    w = _weight()
    qw = quantize_rtn(w, spec)
    assert qw.codes.dtype == torch.uint8
    assert int(qw.codes.max()) <= 2**bits - 1
    assert torch.equal(qw.zeros, qw.zeros.round())
    if symmetric:
        assert torch.all(qw.zeros == 2 ** (bits - 1))
    # Every weight is within half a step of its dequantized value: it is the nearest grid point.
    width = group_size or IN
    step = qw.scales.repeat_interleave(width, dim=1)
    # The slack is float32 rounding of w - scale * (code - zero), relative to |w|.
    assert torch.all((w - qw.dequantize()).abs() <= step / 2 + 1e-6 * w.abs().max())


def test_rtn_error_shrinks_with_bits():
    w = _weight()
    errors = [
        relative_output_error(w, quantize_rtn(w, QuantSpec(b, 32)).dequantize(), None)
        for b in (2, 3, 4, 8)
    ]
    assert errors == sorted(errors, reverse=True) and len(set(errors)) == 4
    assert errors[-1] < 1e-4


def test_group_shapes_and_bad_group_size():
    w = _weight()
    assert quantize_rtn(w, QuantSpec(4)).scales.shape == (OUT, 1)
    qw = quantize_rtn(w, QuantSpec(4, 32))
    assert qw.scales.shape == qw.zeros.shape == (OUT, IN // 32)
    assert qw.codes.shape == (OUT, IN)
    with pytest.raises(ValueError, match="does not divide in_features 128"):
        quantize_rtn(w, QuantSpec(4, 48))


@pytest.mark.parametrize(
    "kwargs", [dict(bits=1), dict(bits=9), dict(bits=4, group_size=0), dict(bits=4.0)]
)
def test_spec_validation(kwargs):
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_requantizing_an_on_grid_weight_is_lossless(bits):
    gen = torch.Generator().manual_seed(bits)
    maxq, width = 2**bits - 1, 32
    codes = torch.randint(0, maxq + 1, (OUT, IN), generator=gen)
    groups = codes.view(OUT, IN // width, width)
    groups[:, :, 0], groups[:, :, 1] = 0, maxq  # every group spans the full code range
    scales = torch.rand(OUT, IN // width, generator=gen) + 0.01
    zeros = torch.randint(0, maxq + 1, (OUT, IN // width), generator=gen).float()
    on_grid = QuantizedWeight(codes.to(torch.uint8), scales, zeros, QuantSpec(bits, width))
    w = on_grid.dequantize()
    h = _hessian(_correlated_inputs())
    # GPTQ moves float-rounding residues (ulps) onto later columns, hence its looser rtol.
    results = [(quantize_rtn(w, on_grid.spec), 1e-6), (gptq_quantize(w, h, on_grid.spec), 1e-5)]
    for qw, rtol in results:
        assert torch.equal(qw.codes, on_grid.codes)
        assert torch.equal(qw.zeros, on_grid.zeros)
        torch.testing.assert_close(qw.scales, scales, rtol=rtol, atol=0)
        torch.testing.assert_close(qw.dequantize(), w, rtol=0, atol=rtol * float(w.abs().max()))


def test_zero_rows_are_exact():
    w = _weight()
    w[3] = 0.0
    for symmetric in (False, True):
        qw = quantize_rtn(w, QuantSpec(3, 32, symmetric))
        assert torch.all(qw.dequantize()[3] == 0)
        assert torch.all(qw.scales > 0)


def test_tensors_round_trip_through_safetensors():
    qw = quantize_rtn(_weight(), QuantSpec(4, 32))
    back = QuantizedWeight.from_tensors(st_load(st_save(qw.tensors())), qw.spec)
    assert torch.equal(back.dequantize(), qw.dequantize())
    with pytest.raises(ValueError, match="lack"):
        QuantizedWeight.from_tensors({"codes": qw.codes}, qw.spec)
    with pytest.raises(ValueError, match="scales must be float32"):
        QuantizedWeight(qw.codes, qw.scales[:, :2], qw.zeros, qw.spec)


def test_relative_output_error():
    w, x = _weight(), _correlated_inputs()
    w_hat = quantize_rtn(w, QuantSpec(3)).dequantize()
    expected = _output_error(w, w_hat, x) / float((w.double() @ x.double().T).pow(2).sum())
    assert relative_output_error(w, w_hat, _hessian(x)) == pytest.approx(expected, rel=1e-9)
    assert relative_output_error(w, w, None) == 0.0


# --- GPTQ -------------------------------------------------------------------------------------


def _reference_gptq(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, act_order: bool = False):
    """Column-by-column optimal-brain-surgeon quantization with the full inverse Hessian, in
    float64, no blocking, no Cholesky: slow and plainly the algorithm of the GPTQ paper."""
    w, h = w.double().clone(), h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += 0.01 * torch.diagonal(h).mean() * torch.eye(IN, dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    maxq, width = spec.maxq, spec.group_size or IN

    def grid(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = cols.amin(1).clamp(max=0), cols.amax(1).clamp(min=0)
        return (hi - lo) / maxq, torch.round(-lo / ((hi - lo) / maxq))

    # act_order: largest diag(H) first, grids fixed up front on the original weight.
    static = [grid(w[:, g : g + width]) for g in range(0, IN, width)]
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(IN)
    remaining = torch.ones(IN, dtype=torch.bool)
    codes = torch.zeros(OUT, IN, dtype=torch.float64)
    for i in order.tolist():
        if act_order:
            scale, zero = static[i // width]
        elif i % width == 0:  # the grid of a group, from the weights as updated so far
            scale, zero = grid(w[:, i : i + width])
        codes[:, i] = torch.clamp(torch.round(w[:, i] / scale) + zero, 0, maxq)
        err = (w[:, i] - scale * (codes[:, i] - zero)) / h_inv[i, i]
        w[:, remaining] -= torch.outer(err, h_inv[i, remaining])  # column i becomes its grid value
        remaining[i] = False
        # Remove column i from the problem: the inverse of H restricted to the other columns.
        h_inv -= torch.outer(h_inv[:, i], h_inv[i, :]) / h_inv[i, i]
    return codes, w  # w now holds the dequantized weight


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_reference(group_size, act_order):
    spec = QuantSpec(3, group_size)
    w, x = _weight(), _correlated_inputs()
    h = _hessian(x)
    ref_codes, ref_w = _reference_gptq(w, h, spec, act_order)
    qw = gptq_quantize(w, h.float(), spec, act_order=act_order)
    ours, theirs = _output_error(w, qw.dequantize(), x), _output_error(w, ref_w, x)
    assert abs(ours - theirs) / theirs < 1e-4
    assert (qw.codes.double() == ref_codes).double().mean() > 0.99


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(group_size, act_order):
    spec = QuantSpec(3, group_size)
    w, x = _weight(), _correlated_inputs()
    rtn = _output_error(w, quantize_rtn(w, spec).dequantize(), x)
    qw = gptq_quantize(w, _hessian(x), spec, act_order=act_order)
    gptq = _output_error(w, qw.dequantize(), x)
    assert gptq < 0.8 * rtn


def test_act_order_keeps_the_packed_format():
    # Static groups: the grids are those of the original weight, in the original column order.
    spec = QuantSpec(4, 32)
    w, h = _weight(), _hessian(_correlated_inputs())
    qw = gptq_quantize(w, h, spec, act_order=True)
    rtn = quantize_rtn(w, spec)
    assert torch.equal(qw.scales, rtn.scales) and torch.equal(qw.zeros, rtn.zeros)


def test_block_size_does_not_change_the_result():
    spec = QuantSpec(3, 32)
    w, x = _weight(), _correlated_inputs()
    h = _hessian(x)
    small, large = (gptq_quantize(w, h, spec, block_size=b) for b in (16, 128))
    assert (small.codes == large.codes).double().mean() > 0.99
    e_small, e_large = (_output_error(w, q.dequantize(), x) for q in (small, large))
    assert abs(e_small - e_large) / e_large < 1e-4


def test_singular_and_zero_hessians_still_quantize():
    w, spec = _weight(), QuantSpec(4, 32)
    few_tokens = _hessian(_correlated_inputs(tokens=16))  # rank 16 of 128
    qw = gptq_quantize(w, few_tokens, spec)
    assert torch.isfinite(qw.dequantize()).all()
    # An all-zero Hessian: every input is dead, so the layer's output ignores the weight.
    assert torch.all(gptq_quantize(w, torch.zeros(IN, IN), spec).dequantize() == 0)
    # Dead input columns are quantized as zero.
    h = _hessian(_correlated_inputs())
    h[5, :], h[:, 5] = 0.0, 0.0
    assert torch.all(gptq_quantize(w, h, spec).dequantize()[:, 5] == 0)


def test_failed_cholesky_retries_with_more_damping():
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(IN, IN, generator=gen, dtype=torch.float64))
    eigenvalues = torch.ones(IN, dtype=torch.float64)
    eigenvalues[0] = -0.05  # 1% damping leaves it indefinite, 10% does not
    h = basis @ torch.diag(eigenvalues) @ basis.T
    w, spec = _weight(), QuantSpec(4, 32)
    retried = gptq_quantize(w, h, spec, damp=0.01)
    assert torch.equal(retried.codes, gptq_quantize(w, h, spec, damp=0.1).codes)
    with pytest.raises(RuntimeError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(IN), spec)


def test_gptq_rejects_bad_inputs():
    w, spec = _weight(), QuantSpec(4)
    with pytest.raises(ValueError, match="hessian must be"):
        gptq_quantize(w, torch.eye(IN + 1), spec)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(w, torch.full((IN, IN), float("nan")), spec)


# --- calibration Hessians ---------------------------------------------------------------------


def test_hessian_accumulator_is_independent_of_batching():
    x = _correlated_inputs(tokens=300)
    one = HessianAccumulator(IN)
    one.add(x)
    split = HessianAccumulator(IN)
    split.add(x[:7])
    split.add(x[7:7])  # an empty batch changes nothing
    split.add(x[7:247].reshape(4, 60, IN))  # [batch, seq, in]
    split.add(x[247:])
    assert one.count == split.count == 300
    torch.testing.assert_close(one.hessian.double(), _hessian(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.hessian, one.hessian, rtol=1e-5, atol=1e-5)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(IN, IN) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.q(x) * self.k(input=x) + self.v(x)
        return self.o(torch.tanh(mixed))


def test_hessian_hooks_share_accumulators_for_a_shared_input():
    block = _Block()
    accumulators, remove = hessian_hooks({n: getattr(block, n) for n in "qkvo"})
    xs = [_correlated_inputs(seed=s, tokens=50).reshape(5, 10, IN) for s in (1, 2)]
    with torch.no_grad():
        for x in xs:
            block(x)
    assert accumulators["q"] is accumulators["k"] is accumulators["v"]
    assert accumulators["o"] is not accumulators["q"]
    x_all = torch.cat(xs).reshape(-1, IN)
    assert accumulators["q"].count == 100
    remove()
    with torch.no_grad():
        block(xs[0])  # no longer recorded
        o_in = torch.tanh(block.q(x_all) * block.k(x_all) + block.v(x_all))
    assert accumulators["q"].count == accumulators["o"].count == 100
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(accumulators["q"].hessian.double(), _hessian(x_all), **close)
    torch.testing.assert_close(accumulators["o"].hessian.double(), _hessian(o_in), **close)


def test_hessian_hooks_refuse_to_mix_inputs_of_a_shared_accumulator():
    block = _Block()
    _, remove = hessian_hooks({"q": block.q, "k": block.k})
    x = _correlated_inputs(tokens=8)
    with torch.no_grad():
        block.q(x)
        block.k(x)  # binds k to q's accumulator
        block.q(x)
        with pytest.raises(RuntimeError, match="different input"):
            block.k(x.clone())
    remove()


# --- operators --------------------------------------------------------------------------------


def test_operators_compress_like_the_functions():
    w, h = _weight(), _hessian(_correlated_inputs())
    rtn, gptq = make_operator("rtn", group_size=32), make_operator("gptq", group_size=32)
    assert not rtn.needs_hessian and gptq.needs_hessian
    assert torch.equal(rtn.compress(w, 3, None).codes, quantize_rtn(w, QuantSpec(3, 32)).codes)
    assert torch.equal(gptq.compress(w, 3, h).codes, gptq_quantize(w, h, QuantSpec(3, 32)).codes)
    with pytest.raises(ValueError, match="needs the layer's calibration Hessian"):
        gptq.compress(w, 3, None)
    with pytest.raises(ValueError, match="bits"):
        rtn.compress(w, 9, None)


def test_operator_keys_cover_the_options():
    base = make_operator("gptq").key()
    assert base["name"] == "gptq"
    for option, value in [
        ("group_size", 64),
        ("symmetric", True),
        ("damp", 0.1),
        ("block_size", 64),
        ("act_order", True),
    ]:
        assert make_operator("gptq", **{option: value}).key() != base, option
    assert make_operator("rtn").key() != make_operator("rtn", symmetric=True).key()


def test_registry_refuses_duplicates_and_names_the_available_operators(monkeypatch):
    monkeypatch.setattr(_base.OPERATORS, "_items", dict(_base.OPERATORS._items))

    class Another(Operator):
        name = "rtn"
        needs_hessian = False

        def compress(self, weight, level, hessian):
            raise NotImplementedError

    with pytest.raises(ValueError, match="already registered"):
        _base.register(Another)
    Another.name = "another"
    _base.register(Another)
    assert isinstance(make_operator("another"), Another)
    with pytest.raises(ValueError, match="unknown compression operator 'awq'.*another, gptq, rtn"):
        make_operator("awq")
    with pytest.raises(ValueError, match="it accepts"):
        make_operator("rtn", damp=0.1)


def test_gptq_many_levels_equal_one_by_one() -> None:
    from presso.compress import make_operator

    torch.manual_seed(3)
    x = torch.randn(512, 64) @ torch.randn(64, 64)
    hessian = 2 * x.T @ x / len(x)
    weight = torch.randn(48, 64)
    for act_order in (False, True):
        op = make_operator("gptq", group_size=16, act_order=act_order)
        together = op.compress_many(weight, [2, 3, 8], hessian)
        for level, qw in zip([2, 3, 8], together):
            alone = op.compress(weight, level, hessian)
            assert qw.spec.bits == level
            assert torch.equal(qw.codes, alone.codes)
            assert torch.allclose(qw.scales, alone.scales) and torch.equal(qw.zeros, alone.zeros)
