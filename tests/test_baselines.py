"""Literature baselines: ShortGPT's block influence and OWL's outlier ratios on the tiny Llama,
and the OWL and ShortGPT strategies on synthetic spaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from presso.compress._hessian import hessian_hooks
from presso.importance import _outlier_ratio, block_influence, dim_blocks, outlier_ratios
from presso.models import ModelHandle, load_model
from presso.search import OWL, Context, ShortGPT, make_strategy
from presso.search._owl import owl_sparsities
from presso.spaces import (
    DROPPED,
    MeanBits,
    MeanSparsity,
    MinDropped,
    SearchSpace,
    bits_dims,
    bits_space,
    depth_dims,
    depth_space,
    sparsity_dims,
    sparsity_space,
)

SHAPES = [(64, 64), (64, 256), (256, 64)]
LEVELS = (70, 60, 50, 40, 30, 0)


@pytest.fixture(scope="module")
def handle() -> ModelHandle:
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------- block influence


def test_block_influence_matches_hidden_states(handle: ModelHandle, windows: torch.Tensor) -> None:
    bi = block_influence(handle, windows, batch_size=3)  # 3 + 1: an uneven last batch
    assert len(bi) == 4 and all(0.0 <= b <= 2.0 for b in bi)
    # hidden_states[-1] is taken after the final norm (transformers 5): an identity norm makes
    # it the last block's own output.
    norm = handle.model.model.norm
    handle.model.model.norm = torch.nn.Identity()
    try:
        with torch.no_grad():
            hs = handle.model(windows, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        handle.model.model.norm = norm
    assert len(hs) == 5
    direct = [1.0 - float(F.cosine_similarity(hs[i], hs[i + 1], dim=-1).mean()) for i in range(4)]
    assert bi == pytest.approx(direct, abs=1e-5)


def test_block_influence_is_measured_on_the_dense_model(
    handle: ModelHandle, windows: torch.Tensor
) -> None:
    dense = block_influence(handle, windows)
    name = handle.units[0].name
    handle.set_weight(name, torch.zeros_like(handle.dense_weight(name)))
    assert block_influence(handle, windows) == pytest.approx(dense, abs=1e-6)


# ---------------------------------------------------------------- outlier ratios


def test_outlier_ratio_mean_scope() -> None:
    """A block of a small-score unit and a large-score unit: against the block's mean the large
    unit is all outliers (OWL's code); against each unit's own mean, nothing is."""
    scores = [torch.ones(2, 2), torch.full((2, 2), 10.0)]
    assert _outlier_ratio(scores, 1.5, "block") == 0.5
    assert _outlier_ratio(scores, 1.5, "unit") == 0.0


def test_outlier_ratios_match_a_direct_computation(
    handle: ModelHandle, windows: torch.Tensor
) -> None:
    ratios = outlier_ratios(handle, windows, m=3.0)
    assert len(ratios) == 4 and all(0.0 <= r <= 1.0 for r in ratios)
    # ||X_j||² is the Hessian's diagonal up to a scale, which cancels against the mean.
    units = [u for u in handle.units if u.block == 1]
    accumulators, remove = hessian_hooks({u.name: handle.linear(u.name) for u in units})
    try:
        handle.forward(windows)
    finally:
        remove()
    scores = [
        handle.dense_weight(u.name).abs() * accumulators[u.name].hessian.diagonal().sqrt()
        for u in units
    ]
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum()) for s in scores) / total
    direct = sum(int((s > 3.0 * mean).sum()) for s in scores) / total
    assert ratios[1] == pytest.approx(direct, abs=2 / total)


def test_planted_outliers_raise_their_block_ratio(windows: torch.Tensor) -> None:
    handle = load_model("tiny-llama")  # a fresh copy: its weights are edited in place
    before = outlier_ratios(handle, windows)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for unit in (u for u in handle.units if u.block == 3):  # the last block: nothing after
            weight = handle.dense_weight(unit.name)
            weight[torch.rand(weight.shape, generator=generator) < 0.02] *= 50.0
    after = outlier_ratios(handle, windows)
    assert after[3] > before[3] and after[3] > max(after[:3])
    assert after[:3] == before[:3], "blocks before the edited one see the same inputs"


def test_dim_blocks_maps_units_and_blocks(handle: ModelHandle) -> None:
    units = [(u.name, u.shape) for u in handle.units]
    assert dim_blocks(handle, sparsity_space(units, LEVELS, 50)) == tuple(
        u.block for u in handle.units
    )
    blocks = [(f"model.layers.{i}", 1) for i in range(4)]
    sublayers = [(f"model.layers.{i}.{p}", 1) for i in range(4) for p in ("self_attn", "mlp")]
    assert dim_blocks(handle, depth_space(blocks, 1)) == (0, 1, 2, 3)
    assert dim_blocks(handle, depth_space([], 1, sublayers=sublayers)) == (0, 0, 1, 1, 2, 2, 3, 3)


# ---------------------------------------------------------------- OWL


def sparsity_blocks(n_blocks: int = 4, target: float = 50.0) -> tuple[SearchSpace, tuple[int, ...]]:
    units = [(f"layer{b}.{g}", shape) for b in range(n_blocks) for g, shape in enumerate(SHAPES)]
    space = sparsity_space(units, LEVELS, target)
    return space, tuple(b for b in range(n_blocks) for _ in SHAPES)


def block_sparsity(space: SearchSpace, config: tuple[int, ...], blocks: tuple[int, ...]) -> list:
    values, weights = np.array(space.values(config)), space.weights
    return [
        float(np.average(values[np.array(blocks) == b], weights=weights[np.array(blocks) == b]))
        for b in sorted(set(blocks))
    ]


def test_owl_sparsities_follow_the_reference_normalisation() -> None:
    s = owl_sparsities([0.01, 0.05, 0.02, 0.03], target=50.0, lam=8.0)
    assert max(s) - min(s) == pytest.approx(16.0)
    assert np.mean(s) == pytest.approx(50.0)
    assert np.argmin(s) == 1 and np.argmax(s) == 0
    assert owl_sparsities([0.02] * 3, target=50.0, lam=8.0) == [50.0] * 3
    weighted = owl_sparsities([0.0, 1.0], target=50.0, lam=8.0, weights=[3, 1])
    assert np.average(weighted, weights=[3, 1]) == pytest.approx(50.0)


@pytest.mark.parametrize("spend_budget", [True, False])
@pytest.mark.parametrize("ratios", [(0.01, 0.05, 0.02, 0.03), (0.0, 0.0, 0.0, 0.1)])
def test_owl_protects_the_outlier_block(ratios: tuple[float, ...], spend_budget: bool) -> None:
    # (0, 0, 0, 0.1): OWL's sparsities (54, 54, 54, 38) snap to (50, 50, 50, 40), under the
    # target, so the repair makes the fewest-outlier blocks sparser.
    space, blocks = sparsity_blocks()
    context = Context(dim_blocks=blocks, outlier_ratios=ratios)
    (request,) = OWL(space, context=context, spend_budget=spend_budget).ask()
    config = request.config
    assert space.is_feasible(config) and request.tag == "owl"
    per_block = block_sparsity(space, config, blocks)
    top = int(np.argmax(ratios))
    assert per_block[top] < min(s for b, s in enumerate(per_block) if b != top)
    mean = space.constraints[0].value(space, config)
    assert 50.0 <= mean < 50.0 + 10.0, "within one level step of the target"


def test_owl_spends_the_budget() -> None:
    space, blocks = sparsity_blocks(target=47.0)
    context = Context(dim_blocks=blocks, outlier_ratios=(0.01, 0.05, 0.02, 0.03))
    config = OWL(space, context=context).ask()[0].config
    for d, dim in enumerate(space.dims):
        if config[d] + 1 < len(dim.levels):
            assert not space.is_feasible(config[:d] + (config[d] + 1,) + config[d + 1 :])


def test_owl_keeps_other_kinds_at_their_uniform_values() -> None:
    units = [(f"layer{b}.{g}", shape) for b in range(4) for g, shape in enumerate(SHAPES)]
    dims = sparsity_dims(units, LEVELS) + bits_dims(units, (2, 3, 4, 8), suffix=":bits")
    space = SearchSpace(dims, [MeanSparsity(50.0), MeanBits(3.0)])
    blocks = tuple(b for b in range(4) for _ in SHAPES) * 2
    config = (
        OWL(space, context=Context(dim_blocks=blocks, outlier_ratios=(0, 1, 2, 3))).ask()[0].config
    )
    uniform = space.best_uniform()
    assert uniform is not None and space.is_feasible(config)
    assert config[len(units) :] == uniform[len(units) :]


def test_owl_refuses_what_it_cannot_use() -> None:
    space, blocks = sparsity_blocks()
    with pytest.raises(ValueError, match="outlier ratios"):
        OWL(space)
    with pytest.raises(ValueError, match="dim_blocks"):
        OWL(space, context=Context(dim_blocks=(0,), outlier_ratios=(0.1,)))
    bits = bits_space([("a", (64, 64))], (2, 4), 3.0)
    with pytest.raises(ValueError, match="sparsity"):
        OWL(bits, context=Context(dim_blocks=(0,), outlier_ratios=(0.1,)))
    with pytest.raises(ValueError, match="lam"):
        make_strategy("owl", space, seed=0, lam=-1.0)


# ---------------------------------------------------------------- ShortGPT


def test_shortgpt_drops_the_lowest_influence_blocks() -> None:
    space = depth_space([(f"layer{i}", 4096) for i in range(6)], 2)
    importance = (0.5, 0.1, 0.9, 0.05, 0.3, 0.7)
    context = Context(dim_blocks=tuple(range(6)), block_importance=importance)
    (request,) = ShortGPT(space, context=context).ask()
    assert space.is_feasible(request.config) and request.tag == "shortgpt"
    dropped = {i for i, v in enumerate(space.values(request.config)) if v == DROPPED}
    assert dropped == {1, 3}


def test_shortgpt_ranks_sublayers_by_their_block() -> None:
    sublayers = [(f"layer{i}.{p}", 4096) for i in range(3) for p in ("self_attn", "mlp")]
    space = depth_space([], 3, sublayers=sublayers)
    context = Context(dim_blocks=(0, 0, 1, 1, 2, 2), block_importance=(0.4, 0.2, 0.6))
    config = ShortGPT(space, context=context).ask()[0].config
    assert space.is_feasible(config)
    # Block 1 (lowest BI) goes whole, then block 0's first-listed sublayer (dimension order).
    assert space.values(config) == [0, 1, 0, 0, 1, 1]


def test_shortgpt_on_the_tiny_llama(handle: ModelHandle, windows: torch.Tensor) -> None:
    space = depth_space([(f"model.layers.{i}", 1) for i in range(4)], 1)
    bi = block_influence(handle, windows)
    context = Context(dim_blocks=dim_blocks(handle, space), block_importance=tuple(bi))
    config = make_strategy("shortgpt", space, seed=0, context=context).ask()[0].config
    assert space.values(config).index(DROPPED) == int(np.argmin(bi))


def test_shortgpt_keeps_other_kinds_at_their_uniform_values() -> None:
    units = [(f"layer{b}.{g}", shape) for b in range(3) for g, shape in enumerate(SHAPES)]
    dims = depth_dims([(f"layer{b}", 4096) for b in range(3)]) + bits_dims(units, (2, 4, 8))
    space = SearchSpace(dims, [MeanBits(4.0), MinDropped(1)])
    blocks = (0, 1, 2) + tuple(b for b in range(3) for _ in SHAPES)
    context = Context(dim_blocks=blocks, block_importance=(0.3, 0.2, 0.1))
    config = ShortGPT(space, context=context).ask()[0].config
    assert space.is_feasible(config) and config[:3] == (1, 1, 0)
    assert config[3:] == space.best_uniform()[3:]  # type: ignore[index]


def test_shortgpt_refuses_what_it_cannot_use() -> None:
    space = depth_space([(f"layer{i}", 4096) for i in range(3)], 1)
    with pytest.raises(ValueError, match="influence"):
        ShortGPT(space)
    with pytest.raises(ValueError, match="dim_blocks"):
        ShortGPT(space, context=Context(dim_blocks=(0,), block_importance=(0.1,)))
    bits = bits_space([("a", (64, 64))], (2, 4), 3.0)
    with pytest.raises(ValueError, match="depth"):
        ShortGPT(bits, context=Context(dim_blocks=(0,), block_importance=(0.1,)))


def test_a_baseline_that_cannot_run_is_refused_before_the_search(
    write_experiment, tmp_path, capsys
) -> None:  # noqa: ANN001
    """Every strategy is made before the first evaluation: a baseline the space cannot take
    is one line at once, and no store is left behind (not an error after the search)."""
    from presso.cli import main
    from tests.conftest import tiny_experiment

    exp = tiny_experiment(baselines=["uniform", "shortgpt"])  # a bits space: no blocks to drop
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "baseline:shortgpt" in err and err.count("\n") == 1
    assert not (tmp_path / "runs.db").exists()
