"""Multi-objective and Bayesian strategies: NSGA-II against random sampling on a front whose
exact hypervolume is known, TPE and GP against random search, and their parts (objectives,
operators, survival, the Optuna study) on their own.

The problem is the contract suite's: ``kl = sum_d sensitivity_d * 2**-bits_d`` with random
sensitivities, under a parameter-weighted mean-bits budget; the second objective is the mean
bits. Being separable, its exact front is a small knapsack dynamic programme.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presso.errors import MissingExtraError
from presso.evaluation import default_objectives
from presso.pareto import hypervolume, non_dominated
from presso.search import GP, NSGA2, TPE, Request, Result, make_strategy
from presso.search._nsga2 import survive
from presso.search._objectives import Objectives
from presso.search._operators import (
    BinaryTournament,
    LevelMutation,
    Repair,
    UniformCrossover,
    drained_fill,
)
from presso.spaces import Config, SearchSpace
from tests.test_strategies import (
    contract_space,
    drive,
    make_space,
    requests_of,
    sensitivities,
    synthetic_fitness,
    synthetic_result,
)

needs_scipy = pytest.mark.skipif(
    importlib.util.find_spec("scipy") is None, reason="the gp strategy needs scipy"
)


def exact_front(space: SearchSpace, sens: np.ndarray, budget: float) -> np.ndarray:
    """``(kl, mean_bits)`` of the true Pareto front within the budget: per total cost (in
    units of the smallest weight × bits), the least kl reachable (multiple-choice knapsack)."""
    unit = int(np.gcd.reduce(space.weights))
    least = {0: 0.0}
    for d, dim in enumerate(space.dims):
        w = int(space.weights[d]) // unit
        nxt: dict[int, float] = {}
        for cost, kl in least.items():
            for bits in dim.levels:
                c, k = cost + w * int(bits), kl + sens[d] * 2.0**-bits
                if k < nxt.get(c, np.inf):
                    nxt[c] = k
        least = nxt
    total = int(space.weights.sum()) // unit
    points = np.array([[kl, cost / total] for cost, kl in least.items()])
    points = points[points[:, 1] <= budget + 1e-12]
    return points[non_dominated(points)]


def objectives_of(space: SearchSpace, configs: list[Config], fitness: Callable) -> np.ndarray:
    return np.array([[fitness(c), space.constraints[0].value(space, c)] for c in configs])


# ---------------------------------------------------------------- NSGA-II


@pytest.mark.parametrize("seed", [0, 1])
def test_nsga2_front_beats_random_sampling(seed: int) -> None:
    space = make_space()
    fitness = synthetic_fitness(space, seed=seed)
    nsga = NSGA2(space, seed=seed, population=16, generations=15)
    steps = drive(nsga, fitness)
    evaluated = [q.config for requests in requests_of(steps) for q in requests]
    n = len(evaluated)
    assert n == 16 * 15 and len(set(evaluated)) == n, "every evaluation is a new configuration"

    ref = np.array([1.1 * fitness(space.lowest()), 3.1])
    best = hypervolume(exact_front(space, sensitivities(space, seed), 3.0), ref)
    front = nsga.front()
    hv = hypervolume(np.array([v for _, v in front]), ref)
    # Random sampling with as many evaluations: the same spread-in-cost sampler as the
    # initial population (fair on both objectives), and budget-filling random search.
    rng = np.random.default_rng(seed)
    spread = [drained_fill(space, rng, rng.random()) for _ in range(n)]
    hv_spread = hypervolume(objectives_of(space, spread, fitness), ref)
    filled = [q.config for r in requests_of(drive(make_strategy("random", space, seed=seed, samples=n), fitness)) for q in r]  # fmt: skip
    hv_filled = hypervolume(objectives_of(space, filled, fitness), ref)
    assert hv <= best + 1e-9
    assert hv > 1.05 * hv_spread and hv > 2 * hv_filled
    assert (best - hv) < 0.7 * (best - hv_spread), "NSGA-II closes the gap random leaves"

    # The front: feasible, mutually non-dominated, and what was measured.
    points = np.array([v for _, v in front])
    assert non_dominated(points).all() and len(front) > 5
    for config, (kl, bits) in front:
        assert space.is_feasible(config) and config in evaluated
        assert kl == fitness(config) and bits == space.constraints[0].value(space, config)
    assert nsga.best() == front[0][0] == min(front, key=lambda m: m[1])[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_nsga2_start_dp_seeds_the_front_from_the_table(seed: int) -> None:
    """``start: dp``: the initial population is the sensitivity table's optimum at costs spread
    along the cost objective (one knapsack each), so at few evaluations the front is nearer
    the exact one than from random starts; on this separable problem the seeds are on it."""
    from tests.test_strategies import synthetic_context

    space = make_space()
    fitness = synthetic_fitness(space, seed=seed)
    context = synthetic_context(space, seed=seed)
    ref = np.array([1.1 * fitness(space.lowest()), 3.1])
    best = hypervolume(exact_front(space, sensitivities(space, seed), 3.0), ref)
    hv = {}
    for start in ("random", "dp"):
        nsga = make_strategy(
            "nsga2", space, seed=seed, context=context, population=12, generations=2, start=start
        )
        steps = drive(nsga, fitness)
        hv[start] = hypervolume(np.array([v for _, v in nsga.front()]), ref)
        initial = [q.config for q in requests_of(steps)[0]]
        assert len(initial) == 12 and len(set(initial)) == 12
        assert all(space.is_feasible(c) for c in initial)
    assert hv["random"] < hv["dp"] <= best + 1e-9
    assert (best - hv["dp"]) < 0.5 * (best - hv["random"])
    # On a separable problem the table's optimum is the front itself, up to the knapsack's
    # cost rounding: twelve seeds alone hold 90% of the exact front's hypervolume.
    seeds = NSGA2(space, seed=seed, context=context, population=12, start="dp")._initial()
    assert hypervolume(objectives_of(space, seeds, fitness), ref) > 0.9 * best
    assert NSGA2.needs({"start": "dp"}) == {"sensitivity"} and not NSGA2.needs({})
    with pytest.raises(ValueError, match="sensitivity table"):
        NSGA2(space, start="dp")


def test_nsga2_batches_share_one_calibration_draw() -> None:
    space = make_space()
    nsga = NSGA2(space, seed=4, population=8, generations=3, tokens=512)
    batches = requests_of(drive(nsga, synthetic_fitness(space)))
    assert [len(b) for b in batches] == [8, 8, 8]
    assert {(q.tokens, q.sample_seed) for b in batches for q in b} == {(512, 4)}
    assert [b[0].tag for b in batches] == ["g1/initial", "g2/offspring", "g3/offspring"]
    initial = [q.config for q in batches[0]]
    assert initial[0] == space.best_uniform()
    bits = [space.constraints[0].value(space, c) for c in initial]
    assert max(bits) - min(bits) > 0.5, "the initial population spreads along the cost axis"


def test_nsga2_maximises_a_leading_minus_objective() -> None:
    space = contract_space("sparsity")
    assert default_objectives(space.constraints) == ["kl", "-mean_sparsity"]
    nsga = NSGA2(space, seed=0, population=8, generations=4)
    drive(nsga, synthetic_fitness(space))
    front = nsga.front()
    sparsity = [s for _, (_, s) in front]
    kl = [k for _, (k, _) in front]
    assert min(sparsity) >= 50.0 - 1e-9, "values as measured, not negated"
    # Along the front, more sparsity costs accuracy.
    assert kl == sorted(kl) and sparsity == sorted(sparsity)


def test_nsga2_results_without_the_objectives_leave_no_best() -> None:
    space = make_space()
    nsga = NSGA2(space, population=4, generations=2)
    while not nsga.finished:
        requests = nsga.ask()
        nsga.tell(requests, [Result(fitness=1.0, metrics={"kl": 1.0}) for _ in requests])
    assert nsga.best() is None and nsga.front() == []


@pytest.mark.parametrize(
    "options",
    [
        {"population": 1},
        {"generations": 0},
        {"tokens": 0},
        {"crossover_prob": 2.0},
        {"start": "bogus"},
    ],
)
def test_nsga2_refuses_bad_options(options: dict) -> None:
    with pytest.raises(ValueError):
        NSGA2(make_space(), **options)
    # The experiment file's options are checked the same way, before any model is loaded.
    with pytest.raises(ValueError, match=next(iter(options))):
        NSGA2.check_options(options)


# ---------------------------------------------------------------- objectives and survival


def test_objectives_vectors() -> None:
    objectives = Objectives(("kl", "-mean_sparsity"))
    ok = Result(fitness=0.5, metrics={"kl": 0.5, "mean_sparsity": 60.0})
    assert objectives.vector(ok).tolist() == [0.5, -60.0]
    assert objectives.raw(ok) == (0.5, 60.0) and objectives.maximise == (False, True)
    assert objectives.unsign(objectives.vector(ok)) == (0.5, 60.0)
    for bad in (
        Result(fitness=None, error="boom", metrics={"kl": 0.5, "mean_sparsity": 60.0}),
        Result(fitness=0.5, metrics={"kl": 0.5}),  # a missing objective
        Result(fitness=0.5, metrics={"kl": float("nan"), "mean_sparsity": 60.0}),
    ):
        assert np.isinf(objectives.vector(bad)).all() and objectives.raw(bad) is None
    with pytest.raises(ValueError):
        Objectives(("kl", "kl"))
    with pytest.raises(ValueError):
        Objectives(("-",))
    assert default_objectives(make_space().constraints) == ["kl", "mean_bits"]
    assert default_objectives(contract_space("depth").constraints) == ["kl", "-dropped"]


def test_survival_keeps_fronts_then_the_least_crowded() -> None:
    points = [[0, 4], [1, 3], [2, 2.9], [3, 1], [4, 0], [5, 5], [np.inf, np.inf]]
    members = [((i,), np.array(p, dtype=float)) for i, p in enumerate(points)]
    kept = [c[0] for c, _ in survive(members, 4)]
    # Front 0 has five points: the extremes (infinite crowding) and the two most isolated.
    assert sorted(kept) == [0, 2, 3, 4]
    assert sorted(c[0] for c, _ in survive(members, 6)) == [0, 1, 2, 3, 4, 5]
    assert len(survive(members, 10)) == len(members)


# ---------------------------------------------------------------- operators


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["bits", "sparsity", "depth"]),
    slack=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_repair_reaches_feasibility_by_lowering(kind: str, slack: bool, seed: int) -> None:  # fmt: skip
    space = contract_space(kind, slack=slack)
    rng = np.random.default_rng(seed)
    config = tuple(int(rng.integers(len(d.levels))) for d in space.dims)
    repair = Repair(space)
    fixed = repair(config, rng)
    assert fixed is not None and space.is_feasible(fixed)
    assert all(f <= c for f, c in zip(fixed, config)), "only lowered"
    if space.is_feasible(config):
        assert fixed == config
    filled = repair(config, rng, fill=True)
    assert filled is not None and space.is_feasible(filled)
    for d, dim in enumerate(space.dims):  # filled: no single raise fits
        if filled[d] + 1 < len(dim.levels):
            assert not space.is_feasible(filled[:d] + (filled[d] + 1,) + filled[d + 1 :])


def test_variation_operators() -> None:
    space = make_space()
    rng = np.random.default_rng(0)
    a, b = space.lowest(), tuple(3 for _ in space.dims)
    child = UniformCrossover(1.0)(a, b, rng)
    assert set(child) == {0, 3} and all(isinstance(i, int) for i in child)
    assert UniformCrossover(0.0)(a, b, rng) == a
    for _ in range(50):
        parent = tuple(int(i) for i in rng.integers(0, 4, size=len(space)))
        mutated = LevelMutation(0.5)(space, parent, rng)
        assert all(abs(m - p) <= 1 and 0 <= m <= 3 for m, p in zip(mutated, parent))
    assert LevelMutation(1.0)(space, a, rng) == tuple(1 for _ in space.dims), "ends move inwards"
    rank, crowding = np.array([1, 0, 0]), np.array([np.inf, 1.0, 2.0])
    wins = [BinaryTournament()(rank, crowding, rng) for _ in range(300)]
    assert wins.count(0) < wins.count(1) < wins.count(2)
    assert drained_fill(space, rng, 1.0) == space.lowest()
    assert space.is_feasible(drained_fill(space, rng, 0.0))


# ---------------------------------------------------------------- Bayesian


def mean_relative_fitness(name: str, seeds: range, per_group: int, **options: object) -> np.ndarray:
    """``fitness(best) / fitness(best uniform)`` per seed (lower is better)."""
    scores = []
    for seed in seeds:
        space = make_space(per_group=per_group)
        fitness = synthetic_fitness(space, seed=seed)
        strategy = make_strategy(name, space, seed=seed, **options)
        drive(strategy, fitness)
        scores.append(fitness(strategy.best()) / fitness(space.best_uniform()))  # type: ignore[arg-type]
    return np.array(scores)


def test_tpe_beats_random_search() -> None:
    seeds = range(6)
    tpe = mean_relative_fitness("tpe", seeds, per_group=4, trials=32, batch=4)
    rand = mean_relative_fitness("random", seeds, per_group=4, samples=32, batch=4)
    assert tpe.mean() < rand.mean() - 0.03
    assert (tpe < rand).sum() >= 4


@needs_scipy
def test_gp_beats_random_search() -> None:
    # A GP proposal takes ~0.3 s here: two seeds of 16 trials on the contract suite's 18 units.
    seeds = range(2)
    gp = mean_relative_fitness("gp", seeds, per_group=6, trials=16, batch=4, startup=6)
    rand = mean_relative_fitness("random", seeds, per_group=6, samples=16, batch=4)
    assert gp.mean() < rand.mean() - 0.04
    assert (gp < rand).all()


@pytest.mark.slow
@needs_scipy
def test_gp_beats_random_search_on_more_seeds() -> None:
    seeds = range(2, 6)
    gp = mean_relative_fitness("gp", seeds, per_group=6, trials=32, batch=4)
    rand = mean_relative_fitness("random", seeds, per_group=6, samples=32, batch=4)
    assert gp.mean() < rand.mean() - 0.05


def test_the_study_learns_exactly_what_was_evaluated() -> None:
    """Sampled proposals are closed as FAIL; the evaluated (repaired) configurations are the
    study's complete trials, told their objective values."""
    from optuna.trial import TrialState

    space = make_space()
    fitness = synthetic_fitness(space)
    tpe = TPE(space, seed=0, trials=12, batch=4, startup=4)
    configs = [q.config for r in requests_of(drive(tpe, fitness)) for q in r]
    trials = tpe._study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.FAIL}
    assert [tuple(t.params[f"d{d}"] for d in range(len(space))) for t in complete] == configs
    assert [t.value for t in complete] == [fitness(c) for c in configs]
    assert tpe.best() == min(configs, key=fitness)


def test_bayesian_multi_objective_mode() -> None:
    space = make_space()
    tpe = TPE(space, seed=1, trials=16, batch=4, objectives=("kl", "mean_bits"), tokens=256)
    steps = drive(tpe, synthetic_fitness(space))
    assert len(tpe._study.directions) == 2
    assert {(q.tokens, q.sample_seed) for r in requests_of(steps) for q in r} == {(256, 1)}
    front = tpe.front()
    assert front and non_dominated(np.array([v for _, v in front])).all()
    assert tpe.best() == front[0][0]
    # No budget filling with a cost objective: cheaper configurations are asked for too.
    bits = {space.constraints[0].value(space, q.config) for r in requests_of(steps) for q in r}
    assert min(bits) < 2.9


def test_bayesian_failed_results_are_told_as_failures() -> None:
    space = make_space()
    tpe = TPE(space, seed=0, trials=8, batch=4)
    requests = tpe.ask()
    results = [Result(fitness=None, error="boom")] + [
        synthetic_result(q.config, synthetic_fitness(space), space) for q in requests[1:]
    ]
    tpe.tell(requests, results)
    assert tpe.best() in [q.config for q in requests[1:]]
    assert len(tpe.ask()) == 4 and not tpe.finished


def test_gp_needs_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"presso\[bayes\]"):
        GP(make_space())


@pytest.mark.parametrize("options", [{"trials": 0}, {"batch": 0}, {"tokens": 0}, {"startup": -1}])
def test_bayesian_refuses_bad_options(options: dict) -> None:
    with pytest.raises(ValueError):
        TPE(make_space(), **options)


def test_small_spaces_repeat_rather_than_stall() -> None:
    """A space with fewer filled configurations than trials still finishes."""
    space = contract_space("depth")  # 15 ways to drop exactly 2 of 6 blocks
    tpe = TPE(space, seed=0, trials=20, batch=4)
    steps = drive(tpe, synthetic_fitness(space))
    assert sum(len(r) for r in requests_of(steps)) == 20
    assert all(space.is_feasible(q.config) for r in requests_of(steps) for q in r)
    assert isinstance(steps[0][0][0], Request)
