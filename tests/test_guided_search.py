"""The exact solver (dp), the fair-uniform baseline, the surrogate and guided EvoPress.

The contract suite in test_strategies.py covers dp, uniform-fill and EvoPress with screening
(seeded, feasible, replayable); these tests check what each promises beyond the contract.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from presso.search import (
    DP,
    AdditiveSurrogate,
    Context,
    EvoPress,
    Result,
    UniformFill,
    fill_uniform,
    knapsack,
    make_strategy,
    solve,
)
from presso.spaces import Budget, SearchSpace, bits_space, depth_space, sparsity_space
from tests.test_strategies import (
    drive,
    evaluate,
    make_space,
    mean_bits,
    requests_of,
    synthetic_context,
    synthetic_fitness,
)

SHAPES = [(64, 64), (64, 256), (32, 64)]


def small_space(kind: str, budget: float) -> SearchSpace:
    units = [(f"layer{i}.{g}", shape) for i in range(2) for g, shape in enumerate(SHAPES)]
    if kind == "bits":
        return bits_space(units, (2, 3, 4, 8), budget)
    if kind == "sparsity":
        return sparsity_space(units, (70, 50, 0), budget)
    return depth_space([(f"layer{i}", 100 * (i + 1)) for i in range(7)], int(budget))


def brute_force(space: SearchSpace, table: list[list[float]]) -> float:
    sizes = [range(len(d.levels)) for d in space.dims]
    return min(
        sum(table[d][lv] for d, lv in enumerate(config))
        for config in itertools.product(*sizes)
        if space.is_feasible(config)
    )


@pytest.mark.parametrize(
    "kind,budget",
    [("bits", 2.5), ("bits", 3.0), ("bits", 3.7), ("sparsity", 40.0), ("sparsity", 55.0)]
    + [("depth", 2), ("depth", 4)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dp_matches_brute_force(kind: str, budget: float, seed: int) -> None:
    space = small_space(kind, budget)
    rng = np.random.default_rng(seed)
    # Random scores, not monotone in the level: the solver may not assume they are.
    table = [list(rng.normal(size=len(d.levels))) for d in space.dims]
    config = solve(space, table)
    assert space.is_feasible(config)
    assert sum(table[d][lv] for d, lv in enumerate(config)) == pytest.approx(
        brute_force(space, table), abs=1e-12
    )


def test_dp_budget_is_exact_on_the_boundary() -> None:
    """A budget met exactly is feasible; one parameter-bit more is not (exact integers)."""
    space = make_space(target=3.0)
    budget = space.constraints[0].budget(space)
    assert budget is not None
    total = int(space.weights.sum())
    assert budget.limit == 3 * total
    top = tuple(len(d.levels) - 1 for d in space.dims)
    table = [[0.0] * (len(d.levels) - 1) + [-1.0] for d in space.dims]  # every unit wants 8 bits
    config = solve(space, table)
    assert mean_bits(space, config) <= 3 and config != top


def test_knapsack_reports_no_fit() -> None:
    assert knapsack(Budget(((5, 6), (5, 7)), 9), [[0, 0], [0, 0]]) is None
    assert knapsack(Budget(((5, 6), (4, 7)), 9), [[0, -1], [0, -1]]) == (0, 0)


def test_dp_needs_the_table_and_one_sum_budget() -> None:
    space = make_space()
    with pytest.raises(ValueError, match="sensitivity table"):
        DP(space)
    joint = SearchSpace(space.dims, [*space.constraints, *space.constraints])
    with pytest.raises(ValueError, match="one binding budget"):
        DP(joint, context=synthetic_context(space))


def latency_space(ms: np.ndarray, limit: float, *extra: object) -> SearchSpace:
    """A bits space priced by a table: unit d at level l costs ``ms[d, l]`` plus 1 ms fixed."""
    from presso.spaces import MaxLatency

    dims = small_space("bits", 8.0).dims

    def predict(space: SearchSpace, config: tuple[int, ...]) -> float:
        return 1.0 + float(sum(ms[d, lv] for d, lv in enumerate(config)))

    return SearchSpace(dims, [*extra, MaxLatency(limit, predict)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("exact", [True, False])
def test_dp_under_a_measured_latency_target_matches_brute_force(seed: int, exact: bool) -> None:
    """SPDY's dynamic program: the most accurate configuration under an additive latency
    prediction. On a 1 µs grid the solver is exact; off the grid costs are rounded up, so the
    solution still fits and gives away at most 1 µs per unit."""
    rng = np.random.default_rng(seed)
    ms = np.sort(rng.uniform(0.05, 0.5, size=(6, 4)), axis=1)
    if exact:
        ms = np.round(ms, 3)
    space = latency_space(ms, limit=1.0 + 0.6 * ms[:, -1].sum())
    table = [list(rng.normal(size=4)) for _ in range(6)]
    config = solve(space, table)
    assert space.is_feasible(config)
    found = sum(table[d][lv] for d, lv in enumerate(config))
    if exact:
        assert found == pytest.approx(brute_force(space, table), abs=1e-12)
    else:  # no worse than the best configuration with 6 µs of headroom to spare
        tight = latency_space(ms, limit=space.constraints[0].limit - 6e-3)
        assert found <= brute_force(tight, table) + 1e-12


def test_dp_leaves_out_a_budget_that_binds_nothing() -> None:
    """``mean_bits: 8`` beside a latency target binds nothing: the latency is solved."""
    from presso.spaces import MeanBits

    ms = np.tile(np.array([0.1, 0.2, 0.3, 0.4]), (6, 1))
    space = latency_space(ms, 1.0 + 6 * 0.25, MeanBits(8.0))
    table = [[3.0, 2.0, 1.0, 0.0] for _ in range(6)]
    config = solve(space, table)
    assert space.is_feasible(config) and sum(config) == 9  # 6 x 0.25 ms spent exactly


def test_a_latency_that_is_not_a_sum_over_units_is_refused() -> None:
    """A prediction with interactions (here the slowest unit decides) has no knapsack."""
    from presso.spaces import MaxLatency

    dims = small_space("bits", 8.0).dims
    slowest = MaxLatency(0.2, lambda space, config: 0.1 * max(config))
    space = SearchSpace(dims, [slowest])
    assert slowest.budget(space) is None
    with pytest.raises(ValueError, match="one binding budget"):
        solve(space, [[0.0] * 4 for _ in dims])


@pytest.mark.parametrize("target", [2.3, 2.5, 3.0, 3.5, 4.0, 5.0])
def test_fair_uniform_fills_the_budget_exactly(target: float) -> None:
    space = make_space(per_group=4, target=target)  # 36 weight units: halves are reachable
    config = fill_uniform(space)
    uniform = space.best_uniform()
    assert uniform is not None and space.is_feasible(config)
    assert all(c >= u for c, u in zip(config, uniform)), "only raises from uniform"
    # Exactly: no feasible configuration spends more parameter-bits (brute force over the
    # spend of raising any subset of units: every unit weight divides the leftover budget).
    budget = space.constraints[0].budget(space)
    assert budget is not None
    spent = sum(budget.costs[d][lv] for d, lv in enumerate(config))
    best = max(
        sum(budget.costs[d][lv] for d, lv in enumerate(c))
        for c in _raises(space, uniform)
        if space.is_feasible(c)
    )
    assert spent == best
    if Fraction(str(target)) * 2 == int(Fraction(str(target)) * 2):
        assert mean_bits(space, config) == Fraction(str(target))


def _raises(space: SearchSpace, start: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every configuration that raises each unit by 0 or 1 level from ``start``."""
    tops = [len(d.levels) - 1 for d in space.dims]
    return [
        tuple(min(s + r, t) for s, r, t in zip(start, raise_, tops))
        for raise_ in itertools.product((0, 1), repeat=len(start))
    ]


def test_fair_uniform_spreads_one_level_raises_over_depth() -> None:
    units = [(f"layer{i}.q", (64, 64)) for i in range(16)]
    space = bits_space(units, (2, 3, 4, 8), 2.5)
    config = fill_uniform(space)
    assert sorted(config) == [0] * 8 + [1] * 8, "half the units one level up, none further"
    raised = [i for i, c in enumerate(config) if c]
    assert max(np.diff(raised)) <= 3, f"raises spread over the depth: {raised}"
    assert UniformFill(space).ask()[0].config == config


def test_surrogate_learns_an_additive_fitness() -> None:
    space = make_space(per_group=4)
    fitness = synthetic_fitness(space, seed=3)
    rng = np.random.default_rng(0)
    sizes = [len(d.levels) for d in space.dims]
    configs = [tuple(int(rng.integers(n)) for n in sizes) for _ in range(300)]
    surrogate = AdditiveSurrogate(space, ridge=0.1)
    for i, c in enumerate(configs[:200]):
        surrogate.add(c, draw=i % 3, fitness=fitness(c) + 0.5 * (i % 3))  # offsets per draw
    surrogate.fit()
    held = configs[200:]
    truth = np.asarray([fitness(c) for c in held])
    pred = surrogate.predict(held)
    assert np.corrcoef(truth, pred)[0, 1] > 0.99


def test_surrogate_prior_ranks_before_any_data() -> None:
    space = make_space()
    context = synthetic_context(space)
    surrogate = AdditiveSurrogate(space, context.sensitivity)
    fitness = synthetic_fitness(space)
    rng = np.random.default_rng(1)
    configs = [tuple(int(rng.integers(len(d.levels))) for d in space.dims) for _ in range(50)]
    pred = surrogate.predict(configs)
    truth = [fitness(c) for c in configs]
    assert np.corrcoef(truth, pred)[0, 1] > 0.99


def guided(space: SearchSpace, seed: int = 0, **options: object) -> EvoPress:
    defaults: dict = {"generations": 6, "offspring": 4, "stages": ((None, 1),), "screen": 32}
    return EvoPress(space, seed=seed, context=synthetic_context(space), **{**defaults, **options})


def test_guided_evopress_starts_from_dp_and_never_ends_worse() -> None:
    space = make_space(per_group=6, target=2.5)
    fitness = synthetic_fitness(space)
    context = synthetic_context(space)
    dp = solve(space, context.sensitivity)  # type: ignore[arg-type]
    evo = guided(space)
    assert evo.start == "dp" and evo.ask()[0].config == dp
    drive(evo, fitness)
    assert fitness(evo.best()) <= fitness(dp)  # type: ignore[arg-type]
    assert mean_bits(space, evo.best()) <= Fraction(5, 2)  # type: ignore[arg-type]


def test_screening_is_deterministic_under_a_seed() -> None:
    space = make_space(per_group=6)
    fitness = synthetic_fitness(space)
    first = requests_of(drive(guided(space, seed=4), fitness))
    assert first == requests_of(drive(guided(space, seed=4), fitness))
    assert first != requests_of(drive(guided(space, seed=5), fitness))


def test_screening_evaluates_what_the_surrogate_ranks_best() -> None:
    """With an exact prior, the screened children of the first generation are the best of
    the bred ones: screening 64 finds better children than breeding 4."""
    space = make_space(per_group=6)
    fitness = synthetic_fitness(space)
    start = {"start": "uniform", "generations": 1}
    screened = guided(space, screen=64, **start).ask()
    plain = guided(space, screen=0, **start).ask()
    assert len(screened) == len(plain) == 5
    assert screened[0].config == plain[0].config, "the same parent"
    best = min(fitness(r.config) for r in screened[1:])
    assert best < min(fitness(r.config) for r in plain[1:])


def test_plain_evopress_needs_no_table() -> None:
    plain = {"start": "uniform", "screen": 0}
    assert EvoPress.needs(plain) == frozenset()
    assert EvoPress.needs({"start": "uniform"}) == {"sensitivity"}, "screening uses it"
    assert EvoPress.needs({}) == {"sensitivity"}
    space = make_space()
    evo = make_strategy("evopress", space, seed=0, context=Context(), **plain)
    assert evo.ask()[0].config == space.best_uniform()
    with pytest.raises(ValueError, match="start"):
        EvoPress(space, start="best")
    with pytest.raises(ValueError, match="sensitivity"):
        EvoPress(space, start="dp")


def test_confirmation_keeps_the_best_on_the_whole_pool() -> None:
    """Selection on small draws may adopt a child that is worse on the whole pool: the last
    step scores the final parent, the surrogate's optimum and other parents beside the dp
    start on the whole pool, and keeps the best of them, whichever it is."""
    space = make_space(per_group=6)
    fitness = synthetic_fitness(space)
    start = solve(space, synthetic_context(space).sensitivity)  # type: ignore[arg-type]

    def run(winner: int | None, confirm: int = 3) -> tuple[EvoPress, list]:
        evo = guided(space, generations=4, confirm=confirm)
        steps = []
        while not evo.finished:
            requests = evo.ask()
            # Small draws misjudge: they rank by minus the fitness, so children get adopted.
            results = evaluate(requests, lambda c: -fitness(c), space=space)
            if requests[0].tag.startswith("final/"):
                # On the whole pool finalist `winner` scores best (None: the start).
                best = len(requests) - 1 if winner is None else winner
                results = [Result(fitness=-1.0 if i == best else 1.0) for i in range(len(requests))]
            evo.tell(requests, results)
            steps.append(requests)
        return evo, steps

    evo, steps = run(None)
    final = steps[-1]
    tags = [r.tag for r in final]
    assert tags[0] == "final/parent" and tags[-1] == "final/start" and 2 < len(tags) <= 4
    assert tags[1:-1] == [f"final/candidate-{i}" for i in range(1, len(tags) - 1)]
    assert all(r.tokens is None for r in final) and final[-1].config == start
    configs = [r.config for r in final]
    assert len(set(configs)) == len(configs), "finalists are distinct"
    assert all(space.is_feasible(c) for c in configs)
    assert final[0].config != start, "the search moved away from its start"
    assert evo.best() == start
    for winner in (0, 1):
        evo, steps = run(winner)
        assert evo.best() == steps[-1][winner].config
    # confirm: 1 is the final parent alone against the start; 0 skips the step.
    assert [r.tag for r in run(None, confirm=1)[1][-1]] == ["final/parent", "final/start"]
    assert not run(None, confirm=0)[1][-1][0].tag.startswith("final/")
    assert EvoPress(space, start="uniform", screen=0).confirm == 0, "the paper's: no check"
