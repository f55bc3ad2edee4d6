"""Strategies: a contract suite every registered strategy passes, then each one's behaviour.

The fitness is synthetic, ``sum_d sensitivity_d * 2**-bits_d`` with random sensitivities:
deterministic, cheap, and minimised by giving sensitive units more bits (on sparsity and depth
spaces, ``2**-level_index``: the costlier level, the smaller the error).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from presso.search import (
    Context,
    ErrorGreedy,
    EvoPress,
    LevelSwitch,
    OptionError,
    RandomSearch,
    Request,
    Result,
    Strategy,
    Uniform,
    available,
    make_strategy,
    strategy_class,
)
from presso.search._evopress import derive_seed
from presso.search._random import fill_budget
from presso.spaces import (
    KINDS,
    Config,
    Dimension,
    MeanBits,
    SearchSpace,
    bits_space,
    depth_space,
    sparsity_space,
)

Fitness = Callable[[Config], float]
Step = tuple[list[Request], list[Result]]

SHAPES = [(64, 64), (64, 256), (256, 64)]
# Small options so that the contract suite runs in well under a second per strategy.
OPTIONS: dict[str, dict[str, Any]] = {
    # screen: the surrogate ranks 24 children a generation, 6 are evaluated.
    "evopress": {"generations": 4, "offspring": 6, "stages": ((64, 3), (256, 1)), "screen": 24},
    "random": {"samples": 10, "batch": 4},
    "nsga2": {"population": 6, "generations": 3},
    "tpe": {"trials": 10, "batch": 4, "startup": 4},
    # One model-based proposal per run (after 3 completed trials): a GP fit takes ~1 s.
    "gp": {"trials": 5, "batch": 4, "startup": 3},
    "autodiffusion": {"generations": 4, "offspring": 6, "stages": ((64, 3), (256, 1))},
}
#: The kinds whose contract spaces have one budget: a skips space has two (steps and blocks),
#: which the exact solver cannot hold.
ONE_BUDGET = tuple(k for k in KINDS.available() if k != "skips")
#: The space kinds a strategy applies to; the contract suite skips the others. A strategy not
#: listed is held to bits spaces only.
APPLIES: dict[str, tuple[str, ...]] = {
    "evopress": KINDS,
    "random": KINDS,
    "uniform": KINDS,
    "error-greedy": ("bits",),
    "owl": ("sparsity",),
    "shortgpt": ("depth",),
    "dp": ONE_BUDGET,
    "uniform-fill": ONE_BUDGET,
    "nsga2": KINDS,
    "tpe": KINDS,
    "gp": KINDS,
    "autodiffusion": ("steps", "skips"),
    "ddim": ("steps", "skips"),
    "dpm-solver": ("steps", "skips"),
}
#: Strategies that need a Context (the synthetic one below).
NEEDS_CONTEXT = {"error-greedy", "owl", "shortgpt", "dp", "evopress"}


def make_space(
    per_group: int = 6, levels: tuple[int, ...] = (2, 3, 4, 8), target: float = 3.0
) -> SearchSpace:
    units = [(f"layer{i}.{g}", shape) for i in range(per_group) for g, shape in enumerate(SHAPES)]
    return bits_space(units, levels, target)


def contract_space(kind: str, slack: bool = False) -> SearchSpace:
    """A space of ``kind`` over 6 blocks named ``layer{i}``; ``slack``: a budget the uniform
    configuration does not meet exactly (for depth: a space of sublayers instead; for
    structured: levels that round to the same KV groups, 30 and 50 % of 3 keep 1 and 2)."""
    if kind == "bits":
        return make_space(target=3.4 if slack else 3.0)
    units = [(f"layer{i}.{g}", shape) for i in range(6) for g, shape in enumerate(SHAPES)]
    if kind == "sparsity":
        return sparsity_space(units, (70, 60, 50, 40, 0), 45.0 if slack else 50.0)
    if kind == "steps":  # a diffusion schedule: 4 (5) of 20 (30) candidate time steps
        from presso.spaces import MaxSteps, solver_dim, steps_dims

        n = 30 if slack else 20
        dims = [*steps_dims(range(999, 0, -(1000 // n))), solver_dim()]
        return SearchSpace(dims, [MaxSteps(5 if slack else 4)])
    if kind == "structured":  # an attention of 3 KV groups and an FFN of 256 channels a block
        from presso.spaces import MaxKept, structured_dims

        structures = [
            (f"layer{i}.{name}", count, params)
            for i in range(6)
            for name, count, params in (("o_proj", 3, 3 * 4096), ("down_proj", 256, 256 * 192))
        ]
        levels = (30, 50, 75) if slack else (25, 50, 75)
        return SearchSpace(structured_dims(structures, levels), [MaxKept(57.3 if slack else 50)])
    if kind == "skips":  # a schedule of 4 (5) steps with 3 UNet blocks each, 9 (12) run
        from presso.spaces import MaxBlocks, MaxSteps, skips_dims, solver_dim, steps_dims

        steps = 5 if slack else 4
        dims = [*steps_dims(range(999, 0, -50)), solver_dim()]
        dims += skips_dims(steps, ["down_blocks.0", "mid_block", "up_blocks.0"])
        return SearchSpace(dims, [MaxSteps(steps), MaxBlocks(12 if slack else 9, 3)])
    if not slack:
        return depth_space([(f"layer{i}", 4096) for i in range(6)], 2)
    sublayers = [(f"layer{i}.{part}", 4096) for i in range(6) for part in ("self_attn", "mlp")]
    return depth_space([], 3, sublayers=sublayers)


def block_of(dim: Dimension) -> int:
    """The block index in a ``layer{i}...`` dimension name (0: a time step, of the schedule)."""
    if not dim.name.startswith("layer"):
        return 0
    return int(dim.name.split(".")[0].removeprefix("layer"))


def sensitivities(space: SearchSpace, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(0.0, 1.5, size=len(space))


def synthetic_fitness(space: SearchSpace, seed: int = 0) -> Fitness:
    sens = sensitivities(space, seed)
    if space.kinds() != ["bits"]:
        return lambda config: float(np.sum(sens * 2.0 ** -np.asarray(config, dtype=np.float64)))
    return lambda config: float(np.sum(sens * 2.0 ** -space.encode(config)))


def synthetic_context(space: SearchSpace, seed: int = 0) -> Context:
    sens = sensitivities(space, seed)
    errors = [[float(s * 2.0**-b) for b in d.levels] for s, d in zip(sens, space.dims)]
    # What the synthetic fitness rises by with one dimension alone below its top level.
    fitness = synthetic_fitness(space, seed)
    top = tuple(len(d.levels) - 1 for d in space.dims)
    table = [
        [fitness(top[:i] + (lv,) + top[i + 1 :]) - fitness(top) for lv in range(len(d.levels))]
        for i, d in enumerate(space.dims)
    ]
    blocks = tuple(block_of(d) for d in space.dims)
    rng = np.random.default_rng(seed)
    return Context(
        unit_errors=tuple(map(tuple, errors)),
        dim_blocks=blocks,
        block_importance=tuple(rng.uniform(0.0, 1.0, size=max(blocks) + 1).tolist()),
        outlier_ratios=tuple(rng.uniform(0.0, 0.05, size=max(blocks) + 1).tolist()),
        sensitivity=tuple(map(tuple, table)),
    )


def build(name: str, space: SearchSpace, seed: int = 0) -> Strategy:
    if name == "gp":
        pytest.importorskip("scipy", reason="the gp strategy needs scipy (presso[bayes])")
    context = synthetic_context(space) if name in NEEDS_CONTEXT else None
    return make_strategy(name, space, seed=seed, context=context, **OPTIONS.get(name, {}))


def evaluate(
    requests: list[Request],
    fitness: Fitness,
    fail: Callable[[int], bool] = lambda i: False,
    space: SearchSpace | None = None,
) -> list[Result]:
    """Synthetic results; with ``space``, their metrics hold what the real evaluator stores:
    the fitness as ``kl`` and each constraint's metric (``mean_bits``...), the objectives of
    multi-objective strategies."""
    return [
        Result(fitness=None, error="boom")
        if fail(i)
        else synthetic_result(r.config, fitness, space)
        for i, r in enumerate(requests)
    ]


def synthetic_result(config: Config, fitness: Fitness, space: SearchSpace | None) -> Result:
    f = fitness(config)
    metrics = {"kl": f}
    if space is not None:
        metrics.update({c.metric: c.value(space, config) for c in space.constraints})
    return Result(fitness=f, metrics=metrics)


def drive(strategy: Strategy, fitness: Fitness, *, max_steps: int = 1000, **kw: Any) -> list[Step]:
    """Run the ask/evaluate/tell loop to the end; returns every step."""
    steps: list[Step] = []
    for _ in range(max_steps):
        if strategy.finished:
            return steps
        requests = strategy.ask()
        results = evaluate(requests, fitness, space=strategy.space, **kw)
        strategy.tell(requests, results)
        steps.append((requests, results))
    raise AssertionError(f"{strategy.name} did not finish in {max_steps} steps")


def requests_of(steps: list[Step]) -> list[list[Request]]:
    return [requests for requests, _ in steps]


def mean_bits(space: SearchSpace, config: Config) -> Fraction:
    total = sum(int(w) * Fraction(v) for w, v in zip(space.weights, space.values(config)))
    return total / int(space.weights.sum())


# ---------------------------------------------------------------- contract suite


@pytest.fixture(params=available())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, name: str) -> str:
    if request.param not in APPLIES.get(name, ("bits",)):
        pytest.skip(f"{name} does not apply to {request.param} spaces")
    return request.param


def test_every_strategy_applies_to_some_space_kind() -> None:
    for name in available():
        kinds = APPLIES.get(name, ("bits",))
        assert kinds and set(kinds) <= set(KINDS), name


def test_options_schema_takes_the_defaults_and_names_a_bad_option(name: str) -> None:
    cls = strategy_class(name)
    assert cls.check_options({}) == {}  # every default passes the strategy's own checks
    for option, (kind, _) in cls.option_types().items():
        with pytest.raises(OptionError) as err:
            cls.check_options({option: object()})  # no option takes an arbitrary object
        assert err.value.loc[0] == option, kind
    with pytest.raises(OptionError, match="unknown option"):
        cls.check_options({"no_such_option": 1})


def test_same_seed_gives_same_requests(name: str, kind: str) -> None:
    space = contract_space(kind)
    fitness = synthetic_fitness(space)
    first = requests_of(drive(build(name, space, seed=3), fitness))
    second = requests_of(drive(build(name, space, seed=3), fitness))
    assert first == second


@pytest.mark.parametrize("stochastic", ["evopress", "random", "nsga2", "tpe", "gp"])
def test_different_seed_gives_different_requests(stochastic: str) -> None:
    space = make_space()
    fitness = synthetic_fitness(space)
    assert requests_of(drive(build(stochastic, space, seed=1), fitness)) != requests_of(
        drive(build(stochastic, space, seed=2), fitness)
    )


@pytest.mark.parametrize("slack", [False, True])
def test_requests_are_valid_and_feasible(name: str, kind: str, slack: bool) -> None:
    space = contract_space(kind, slack=slack)
    for requests in requests_of(drive(build(name, space), synthetic_fitness(space))):
        assert requests
        for request in requests:
            assert all(isinstance(i, int) for i in request.config)
            space.validate(request.config)
            assert space.is_feasible(request.config)


def test_finishes_and_best_is_feasible(name: str, kind: str) -> None:
    space = contract_space(kind)
    strategy = build(name, space)
    assert strategy.best() is None
    drive(strategy, synthetic_fitness(space))
    assert strategy.finished and strategy.ask() == []
    best = strategy.best()
    assert best is not None and space.is_feasible(best)


def test_planned_bounds_the_evaluations(name: str, kind: str) -> None:
    """What a strategy plans (progress bars' totals) is what it asks, at most; the budget-bound
    strategies ask exactly that many on the contract spaces."""
    space = contract_space(kind)
    strategy = build(name, space)
    planned = strategy.planned
    asked = sum(len(r) for r in requests_of(drive(strategy, synthetic_fitness(space))))
    if planned is not None:
        assert 0 < asked <= planned
    if name in ("random", "tpe", "nsga2", "uniform"):
        assert asked == planned


def test_ask_is_idempotent_until_tell(name: str, kind: str) -> None:
    strategy = build(name, contract_space(kind))
    assert strategy.ask() == strategy.ask()


def test_tell_refuses_mismatched_results(name: str, kind: str) -> None:
    strategy = build(name, contract_space(kind))
    requests = strategy.ask()
    with pytest.raises(ValueError):
        strategy.tell(requests, [])
    with pytest.raises(ValueError):
        other = requests[:-1] + [Request(requests[-1].config, tag="other")]
        strategy.tell(other, [Result(1.0)] * len(requests))


def test_replay_rebuilds_the_same_state(name: str, kind: str) -> None:
    """Resume: a strategy rebuilt and told the stored results asks what the original asks."""
    space = contract_space(kind)
    fitness = synthetic_fitness(space)
    original = build(name, space, seed=5)
    stored: list[Step] = []
    for _ in range(3):
        if original.finished:
            break
        requests = original.ask()
        results = evaluate(requests, fitness, fail=lambda i: i == 1, space=space)
        original.tell(requests, results)
        stored.append((requests, results))
    rebuilt = build(name, space, seed=5)
    for requests, results in stored:
        rebuilt.tell(requests, results)  # told without asking, as a replay may do
    assert rebuilt.ask() == original.ask()
    assert rebuilt.best() == original.best()


def test_failures_do_not_crash(name: str, kind: str) -> None:
    space = contract_space(kind)
    strategy = build(name, space)
    drive(strategy, synthetic_fitness(space), fail=lambda i: i % 2 == 0)
    best = strategy.best()
    assert best is None or space.is_feasible(best)


def test_all_failures_leave_no_best(name: str, kind: str) -> None:
    space = contract_space(kind)
    strategy = build(name, space)
    drive(strategy, synthetic_fitness(space), fail=lambda i: True)
    assert strategy.finished and strategy.best() is None


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="available"):
        make_strategy("nope", make_space(), seed=0)


# ---------------------------------------------------------------- EvoPress


def test_evopress_beats_uniform_and_never_regresses() -> None:
    space = make_space(per_group=8)
    fitness = synthetic_fitness(space, seed=11)
    uniform = fitness(space.best_uniform())  # type: ignore[arg-type]
    evo = EvoPress(space, seed=0, generations=40, offspring=16, stages=((None, 4), (None, 1)))
    drive(evo, fitness)
    scores = [f for _, f in evo.history]
    assert len(scores) == 40 and all(f is not None for f in scores)
    assert all(b <= a for a, b in zip(scores, scores[1:])), "elitism: the parent never gets worse"
    assert scores[0] <= uniform
    assert fitness(evo.best()) < 0.8 * uniform  # type: ignore[arg-type]
    assert mean_bits(space, evo.best()) == 3  # type: ignore[arg-type]  # switches keep the budget


def test_evopress_stages_share_fresh_calibration_draws() -> None:
    space = make_space()
    stages = ((100, 3), (200, 2), (None, 1))
    evo = EvoPress(space, seed=7, generations=2, offspring=5, stages=stages)
    steps = drive(evo, synthetic_fitness(space))
    assert [len(r) for r in requests_of(steps)] == [6, 3, 2] * 2
    assert [r[0].tokens for r in requests_of(steps)] == [100, 200, None] * 2
    seeds = [{q.sample_seed for q in r} for r in requests_of(steps)]
    assert all(len(s) == 1 for s in seeds), "one draw per stage"
    assert len(set.union(*seeds)) == 6, "a fresh draw per stage and generation"
    assert seeds[0] == {derive_seed(7, 0, 0)}
    first = requests_of(steps)[0]
    assert first[0].tag == "g1/s1/parent" and first[0].config == space.best_uniform()
    assert all(q.tag == "g1/s1/offspring" for q in first[1:])
    assert len({q.config for q in first}) == 6, "distinct offspring, none equal to the parent"
    assert [g for g, _ in evo.history] == [1, 2]


def test_evopress_uses_slack_under_the_budget() -> None:
    space = make_space(target=3.5)  # the uniform start, 3 bits, leaves half a bit unused
    evo = EvoPress(space, seed=0, generations=30, offspring=8, stages=((None, 1),))
    drive(evo, synthetic_fitness(space))
    assert mean_bits(space, evo.best()) > Fraction(33, 10)  # type: ignore[arg-type]


def test_evopress_starts_from_initial_or_a_filled_random_config() -> None:
    space = make_space()
    initial = fill_budget(space, np.random.default_rng(0))
    assert EvoPress(space, initial=initial).ask()[0].config == initial
    with pytest.raises(ValueError, match="infeasible"):
        EvoPress(space, initial=tuple(3 for _ in space.dims))
    # No level shared by all units: no uniform configuration, so a random filled start.
    dims = [Dimension(f"u{i}", (2, 4) if i % 2 else (3, 5), 16, "g") for i in range(6)]
    odd = SearchSpace(dims, [MeanBits(4.0)])
    assert odd.best_uniform() is None
    start = EvoPress(odd, seed=0).ask()[0].config
    assert odd.is_feasible(start) and start != odd.lowest()


@pytest.mark.parametrize(
    "options",
    [
        {"stages": ((64, 2),)},
        {"stages": ()},
        {"stages": ((0, 1),)},
        {"generations": 0},
        {"max_mutations": 0},
    ],
)
def test_evopress_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EvoPress(make_space(), **options)


def test_evopress_stops_when_no_mutation_is_possible() -> None:
    space = make_space(target=8.0)  # uniform 8 bits: no unit can move up
    evo = EvoPress(space, generations=10, stages=((None, 1),))
    steps = drive(evo, synthetic_fitness(space))
    only = Request(space.uniform(8), sample_seed=derive_seed(0, 0, 0), tag="g1/s1/parent")
    assert requests_of(steps) == [[only]], "the parent is scored once, then the search stops"


# ---------------------------------------------------------------- level-switch mutation


@st.composite
def spaces_and_parents(
    draw: st.DrawFn, levels: tuple[int, ...] | None = None, slack: bool = True
) -> tuple[SearchSpace, Config]:
    """A bits space of a few shape groups, a random parent, and a budget the parent meets
    (exactly, or with some slack)."""
    levels = levels or draw(st.sampled_from([(2, 3, 4, 8), (2, 3, 4), (2, 4, 8)]))
    counts = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    units = [(f"u{g}.{i}", SHAPES[g]) for g, n in enumerate(counts) for i in range(n)]
    indices = st.integers(0, len(levels) - 1)
    parent = tuple(draw(st.lists(indices, min_size=len(units), max_size=len(units))))
    probe = bits_space(units, levels, max(levels))
    target = math.nextafter(float(mean_bits(probe, parent)), math.inf)
    if slack:
        target += draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    space = bits_space(units, levels, target)
    assume(space.is_feasible(parent))
    return space, parent


def single_moves(space: SearchSpace, config: Config) -> list[Config]:
    """Every feasible lone up move and up/down switch, by brute force."""
    moves = []
    for a, dim in enumerate(space.dims):
        if config[a] + 1 >= len(dim.levels):
            continue
        up = config[:a] + (config[a] + 1,) + config[a + 1 :]
        moves.append(up)
        moves += [
            up[:b] + (up[b] - 1,) + up[b + 1 :] for b in range(len(config)) if b != a and up[b] > 0
        ]
    return [m for m in moves if space.is_feasible(m)]


@settings(max_examples=150, deadline=None)
@given(case=spaces_and_parents(), seed=st.integers(0, 2**16))
def test_mutation_is_feasible_and_moves_when_it_can(
    case: tuple[SearchSpace, Config], seed: int
) -> None:
    space, parent = case
    child = LevelSwitch(max_mutations=3)(space, parent, np.random.default_rng(seed))
    space.validate(child)
    assert space.is_feasible(child)
    if single_moves(space, parent):
        assert child != parent
    if not any(i < len(d.levels) - 1 for i, d in zip(parent, space.dims)):
        assert child == parent, "nothing can move up"


@settings(max_examples=100, deadline=None)
@given(case=spaces_and_parents(levels=(2, 3, 4), slack=False), seed=st.integers(0, 2**16))
def test_equal_step_switches_keep_mean_bits(case: tuple[SearchSpace, Config], seed: int) -> None:
    """On the budget with equal level steps, same-group switches keep the mean bits exactly."""
    space, parent = case
    groups = [d.group for d in space.dims]
    same_group = [
        (a, b)
        for a in range(len(parent))
        for b in range(len(parent))
        if a != b and groups[a] == groups[b] and parent[a] < 2 and parent[b] > 0
    ]
    assume(same_group)
    child = LevelSwitch(max_mutations=3)(space, parent, np.random.default_rng(seed))
    assert child != parent
    assert mean_bits(space, child) == mean_bits(space, parent)


def test_unequal_steps_are_paid_by_several_partners() -> None:
    """4→8 bits is paid by four same-group units going down one bit each, on the budget."""
    space = bits_space([(f"u{i}", (64, 64)) for i in range(6)], (2, 3, 4, 8), 3.0)
    parent = (2, 0, 1, 1, 1, 1)  # 4, 2, 3, 3, 3, 3 bits: mean 3
    rng = np.random.default_rng(0)
    children = [LevelSwitch(max_mutations=1)(space, parent, rng) for _ in range(200)]
    assert all(space.is_feasible(c) for c in children)
    to_eight = [c for c in children if c[0] == 3]
    assert to_eight and all(mean_bits(space, c) == 3 for c in to_eight)


# ---------------------------------------------------------------- baselines


def test_uniform_asks_the_best_uniform_config_once() -> None:
    space = make_space(target=3.5)
    strategy = Uniform(space)
    assert strategy.ask() == [Request(space.uniform(3), tokens=None, sample_seed=0, tag="uniform")]
    dims = [Dimension("a", (2, 4), 8, "g"), Dimension("b", (3, 5), 8, "g")]
    odd = SearchSpace(dims, [MeanBits(5)])
    with pytest.raises(ValueError, match="uniform"):
        Uniform(odd)


def test_random_samples_spend_the_budget() -> None:
    space = make_space(target=3.3)
    strategy = RandomSearch(space, seed=0, samples=12, batch=5, tokens=512)
    steps = drive(strategy, synthetic_fitness(space))
    assert [len(r) for r in requests_of(steps)] == [5, 5, 2]
    configs = [q.config for r in requests_of(steps) for q in r]
    assert len(set(configs)) == 12 and all(q.tokens == 512 for r in requests_of(steps) for q in r)
    for config in configs:
        assert space.is_feasible(config)
        bits = mean_bits(space, config)
        assert not [m for m in single_moves(space, config) if mean_bits(space, m) > bits]
    fitness = synthetic_fitness(space)
    assert strategy.best() == min(configs, key=fitness)


def test_error_greedy_gives_bits_to_the_sensitive_unit() -> None:
    space = make_space(levels=(2, 3, 4, 8), target=3.0)
    errors = [[2.0**-b for b in d.levels] for d in space.dims]
    errors[5] = [1000 * e for e in errors[5]]
    strategy = ErrorGreedy(space, context=Context(unit_errors=tuple(map(tuple, errors))))
    (request,) = strategy.ask()
    config = request.config
    bits = space.values(config)
    assert space.is_feasible(config) and request.tokens is None
    assert bits[5] == 8 and all(b < 8 for i, b in enumerate(bits) if i != 5)
    # The budget is spent to within one level step: no single upgrade fits any more.
    for d, dim in enumerate(space.dims):
        if config[d] + 1 < len(dim.levels):
            assert not space.is_feasible(config[:d] + (config[d] + 1,) + config[d + 1 :])


def test_error_greedy_prefers_cheap_units_for_equal_gains() -> None:
    """Equal error curves: the greedy spends bits where they are cheapest (the small units)."""
    space = make_space(per_group=2, target=2.2)
    errors = tuple(tuple(2.0**-b for b in d.levels) for d in space.dims)
    config = ErrorGreedy(space, context=Context(unit_errors=errors)).ask()[0].config
    small = [c for c, d in zip(config, space.dims) if d.weight == 64 * 64]
    large = [c for c, d in zip(config, space.dims) if d.weight > 64 * 64]
    assert min(small) > max(large)


def test_error_greedy_needs_unit_errors() -> None:
    space = make_space()
    with pytest.raises(ValueError, match="unit errors"):
        ErrorGreedy(space)
    with pytest.raises(ValueError, match="units"):
        ErrorGreedy(space, context=Context(unit_errors=((0.1, 0.01),)))


def test_autodiffusion_searches_steps_then_steps_and_skips() -> None:
    """Two stages on a space that skips blocks: the first moves only time steps, under the
    fixed skip pattern (the deepest block skipped at every step after the first); the second
    moves skips too, from the first stage's best; every request meets both budgets."""
    from presso.search._autodiffusion import skip_pattern, uniform_schedule

    space = contract_space("skips")
    skips = [d for d, dim in enumerate(space.dims) if dim.kind == "skips"]
    executed = set(skip_pattern(space))
    skipped = {space.dims[d].name for d in skips if d not in executed}
    assert skipped == {"skip.1.mid_block", "skip.2.mid_block", "skip.3.mid_block"}
    start = uniform_schedule(space)
    assert space.metrics(start) == {"steps": 4.0, "blocks": 9.0}

    options = {"generations": 3, "offspring": 4, "stages": ((64, 2), (256, 1))}
    strategy = make_strategy("autodiffusion", space, seed=0, skip_generations=3, **options)
    steps = drive(strategy, synthetic_fitness(space))
    requests = [r for batch in requests_of(steps) for r in batch]
    first = [r for r in requests if not r.tag.startswith("skips/")]
    second = [r for r in requests if r.tag.startswith("skips/")]
    assert first and second and requests == first + second
    assert all([r.config[d] for d in skips] == [start[d] for d in skips] for r in first)
    assert any([r.config[d] for d in skips] != [start[d] for d in skips] for r in second)
    assert len({tuple(r.config[d] for d in skips) for r in first}) == 1
    assert all(space.is_feasible(r.config) for r in requests)
    assert strategy.best() is not None and space.is_feasible(strategy.best())
    assert [g for g, _ in strategy.history] == list(range(1, 7))
