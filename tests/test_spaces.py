"""The bits space: exact budget, encode/decode, uniform configurations."""

from __future__ import annotations

import pytest

from presso.spaces import Dimension, MeanBits, SearchSpace, bits_space


def _space(target: float = 3.0) -> SearchSpace:
    units = [("a", (4, 8)), ("b", (4, 8)), ("c", (8, 8))]  # weights 32, 32, 64
    return bits_space(units, [2, 3, 4, 8], target)


def test_budget_is_held_exactly() -> None:
    space = _space(3.0)
    on_budget = (0, 2, 1)  # 2*32 + 4*32 + 3*64 = 384 = 3.0 * 128
    assert space.constraints[0].value(space, on_budget) == 3.0
    assert space.is_feasible(on_budget)
    assert not space.is_feasible((1, 2, 1))  # 3.25
    # a budget that is not a binary fraction is still exact: 2.1 * 128 = 268.8
    tight = _space(2.1)
    assert tight.is_feasible((0, 0, 0)) and not tight.is_feasible((1, 0, 0))


def test_fractional_levels_use_exact_rationals() -> None:
    dims = [Dimension("x", (0.5, 1.5), 3, "g"), Dimension("y", (0.5, 1.5), 3, "g")]
    space = SearchSpace(dims, [MeanBits(1.0)])
    assert space.is_feasible((0, 1)) and not space.is_feasible((1, 1))


def test_encode_decode_round_trip() -> None:
    space = _space()
    config = (0, 3, 1)
    vector = space.encode(config)
    assert list(vector) == [2.0, 8.0, 3.0]
    assert space.decode(vector) == config
    assert space.decode([2.4, 6.5, 3.6]) == (0, 3, 2)  # nearest level
    assert space.from_dict(space.to_dict(config)) == config


def test_uniform_and_impossible_budget() -> None:
    assert _space(3.0).best_uniform() == (1, 1, 1)
    assert _space(3.5).best_uniform() == (1, 1, 1)
    with pytest.raises(ValueError, match="cannot be met"):
        _space(1.5)
    with pytest.raises(ValueError, match="monotone"):
        Dimension("z", (3, 2, 4), 1, "g")
    with pytest.raises(ValueError, match="kind"):
        Dimension("z", (2, 3), 1, "g", kind="color")


def test_uniform_depth_drops_the_last_blocks() -> None:
    from presso.spaces import depth_space

    space = depth_space([(f"model.layers.{i}", 10) for i in range(6)], dropped=2)
    assert space.best_uniform() == (1, 1, 1, 1, 0, 0)


def test_params_and_size_budgets_look_across_kinds() -> None:
    from presso.spaces import MaxParams, MaxSize, bits_dims, depth_dims, sparsity_dims

    units = [("m.layers.0.a", (4, 8)), ("m.layers.1.a", (4, 8))]  # 32 weights each
    dims = (
        bits_dims(units[:1], [2, 4], suffix=":bits")
        + sparsity_dims(units[:1], [0, 50], suffix=":sparsity")
        + bits_dims(units[1:], [2, 4], suffix=":bits")
        + depth_dims([("m.layers.1", 40)])
    )
    counts = [(name, 32) for name, _ in units]
    params = MaxParams(48, counts)
    size = MaxSize(1.0, counts, group_size=8, in_features={n: 8 for n, _ in units})
    space = SearchSpace(dims, [params, size])
    # unit 0 at 4 bits and 50% sparse; unit 1 at 2 bits, its block kept
    config = (1, 0, 0, 1)
    assert params.value(space, config) == 16 + 32
    expected_bits = (16 * 4 + 32 / 8 * 32 + 32) + (32 * 2 + 32 / 8 * 32)
    assert size.value(space, config) == pytest.approx(expected_bits / 8 / 1e6)
    dropped = (1, 0, 0, 0)  # block 1 dropped: its unit no longer counts
    assert params.value(space, dropped) == 16
    assert space.is_feasible(config) and not space.is_feasible((1, 1, 0, 1))  # 64 > 48 params
