"""The evaluator: KL to the dense model, prefix reuse that changes nothing but speed,
failures as data, held-out perplexity."""

from __future__ import annotations

import pytest

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import Request

from .conftest import tiny_experiment


@pytest.fixture(scope="module")
def setup(presso_cache) -> Setup:
    import os

    os.environ["PRESSO_CACHE"] = str(presso_cache)
    s = Setup(Experiment.model_validate(tiny_experiment()))
    s.prepare()
    return s


def test_prefix_reuse_is_exact_and_skips_blocks(setup: Setup) -> None:
    space = setup.space
    parent = space.uniform(3)
    child = list(parent)
    last = len(space) - 1  # a unit of the last block
    child[last] = space.dims[last].levels.index(4)
    child = tuple(child)

    plain = setup.evaluator()
    plain._cache.max_bytes = 0  # no reuse
    reusing = setup.evaluator()
    for config in (parent, child):
        request = Request(config, tokens=256, sample_seed=7)
        assert reusing.evaluate(request).fitness == plain.evaluate(request).fitness
    n_blocks = len(setup.handle.blocks)
    assert plain.blocks_reused == 0
    assert reusing.blocks_reused == n_blocks - 1  # the child ran only its last block


def test_kl_grows_as_bits_fall(setup: Setup) -> None:
    ev = setup.evaluator()
    kl = {b: ev.evaluate(Request(setup.space.uniform(b))).fitness for b in (2, 3, 4, 8)}
    assert kl[2] > kl[3] > kl[4] > kl[8] > 0


def test_same_request_same_fitness_and_sampling(setup: Setup) -> None:
    ev = setup.evaluator()
    r = Request(setup.space.uniform(3), tokens=128, sample_seed=3)
    assert ev.evaluate(r).fitness == ev.evaluate(r).fitness
    assert ev.sample(128, 3) == ev.sample(128, 3)
    assert len(ev.sample(128, 3)) == 2  # 128 tokens of 64-token windows
    assert ev.sample(None, 0) == list(range(8))


def test_failed_evaluation_is_data(setup: Setup) -> None:
    result = setup.evaluator().evaluate(Request((99,) * len(setup.space)))
    assert not result.ok and "level index 99" in result.error


def test_heldout_metrics(setup: Setup) -> None:
    ev = setup.evaluator()
    h8, h2 = ev.heldout(setup.space.uniform(8)), ev.heldout(setup.space.uniform(2))
    assert h8["ppl"] > 1 and h8["kl"] < h2["kl"]


def test_calibration_perplexity_is_the_windows_own(setup: Setup) -> None:
    import math

    import torch

    ev = setup.evaluator()
    request = Request(setup.space.uniform(3), tokens=128, sample_seed=3)
    metrics = ev.evaluate(request).metrics
    ids = setup.data.calibration[ev.sample(128, 3)]
    ev.apply(request.config)
    logits = setup.handle.forward(ids)[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
    )
    assert metrics["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-4)
