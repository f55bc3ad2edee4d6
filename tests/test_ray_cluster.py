"""Ray for real: a worker killed mid-evaluation is replaced and its candidate evaluated again
(the results are those of a run without the fault), and a search on a two-node Ray cluster
started on this machine (`ray start --head` plus a second `ray start --address`, each with its
own temp dir and presso cache: the nodes share nothing through presso's cache path)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from presso.cli import main
from presso.config import Experiment
from presso.errors import MissingExtraError
from presso.search._cluster import ray_command, two_node_cluster
from presso.store import ResultsStore

from .conftest import tiny_experiment


def test_a_killed_worker_is_replaced_and_its_request_evaluated_again(ray_session: Any) -> None:
    from presso.experiment import EvaluatorFactory, Setup
    from presso.search import LocalPool, RayPool, Request

    setup = Setup(Experiment.model_validate(tiny_experiment()))
    setup.prepare()
    space = setup.space
    requests = [
        Request(tuple((i + k) % 3 for k in range(len(space))), tokens=128, sample_seed=i)
        for i in range(10)
    ]
    expected = dict(LocalPool(setup.evaluator()).map(requests))

    pool = RayPool(EvaluatorFactory(setup.to_spec()), workers=2)
    try:
        victim = pool.pids()[0]
        got = {}
        for i, result in pool.map(requests):
            got[i] = result
            if len(got) == 1:  # the other worker is mid-evaluation, more are queued
                os.kill(victim, signal.SIGKILL)
        assert pool.replaced >= 1
        assert victim not in pool.pids()
        assert {i: r.fitness for i, r in got.items()} == {i: r.fitness for i, r in expected.items()}
        assert all(r.error is None for r in got.values())
    finally:
        pool.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A head node with no CPUs for work and a worker node with two, each with its own temp
    dir and presso cache (see presso.search._cluster)."""
    try:
        ray_command()
    except MissingExtraError as err:
        pytest.skip(str(err))
    caches = {"head": tmp_path / "head-cache", "node": tmp_path / "node-cache"}
    with two_node_cluster((caches["head"], caches["node"]), cpus=2) as address:
        yield {"address": address, "caches": caches}


def _wait_for_cpus(ray: Any, cpus: int, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while ray.cluster_resources().get("CPU", 0) < cpus:
        assert time.time() < deadline, f"the cluster has {ray.cluster_resources()}"
        time.sleep(0.5)


@pytest.mark.slow
def test_search_on_a_two_node_cluster(
    cluster: dict[str, Any], tmp_path: Path, presso_cache: Path
) -> None:
    import ray

    if ray.is_initialized():  # the session's local instance: this test needs the cluster
        ray.shutdown()
    ray.init(address=cluster["address"], log_to_driver=False)
    _wait_for_cpus(ray, 2)  # the worker node has joined
    store = tmp_path / "runs.db"
    runner = {"kind": "ray", "workers": 2, "threads": 1, "address": cluster["address"]}
    for name, exp in (
        ("cluster", tiny_experiment(name="cluster", runner=runner)),
        ("local", tiny_experiment(name="local")),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"store": str(store), **exp}))
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["search", str(path), "--quiet"]) == 0
    ray.shutdown()

    s = ResultsStore(str(store))
    on_cluster = [(r.tag, r.levels, r.fitness) for r in s.records(s.open("cluster"))]
    in_process = [(r.tag, r.levels, r.fitness) for r in s.records(s.open("local"))]
    # The same search, evaluation for evaluation (a stage's results may arrive in another order).
    assert len(on_cluster) > 10
    assert sorted(on_cluster, key=repr) == sorted(in_process, key=repr)
    # The work ran on the worker node, which built the levels in its own cache from the same
    # content address (the head has no CPUs for it; the driver's cache was never handed over).
    built = list(cluster["caches"]["node"].rglob("*"))
    assert any(p.is_file() for p in built), "the worker node's cache is empty"
    assert not cluster["caches"]["head"].exists() or not any(
        p.is_file() for p in cluster["caches"]["head"].rglob("*")
    )
