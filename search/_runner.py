"""The runner owns the loop: ask the strategy, evaluate on a pool, record, tell.

Pools evaluate requests in this process (``LocalPool``) or on Ray actors that each hold
an evaluator built by a factory the caller gives (``RayPool``): the search does not know
how an evaluator is made, only that it answers ``evaluate(request)``. Results are recorded as each one
arrives, so a run killed mid-step loses at most the evaluations in flight; on resume the
strategy is replayed from the stored results and only the missing evaluations run.
"""

from __future__ import annotations

import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from presso.errors import MissingExtraError, PressoError
from presso.evaluation import Request, Result
from presso.search._base import Strategy


class Pool(ABC):
    """Somewhere to evaluate requests."""

    @abstractmethod
    def map(self, requests: Sequence[Request]) -> Iterator[tuple[int, Result]]:
        """Evaluate ``requests``; yield ``(position, result)`` as each finishes."""

    def close(self) -> None:  # noqa: B027 - optional: most pools hold nothing to release
        """Release workers."""


class LocalPool(Pool):
    """Evaluates in this process with one evaluator (anything with ``evaluate(request)``)."""

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator

    def map(self, requests: Sequence[Request]) -> Iterator[tuple[int, Result]]:
        for i, request in enumerate(requests):
            yield i, self.evaluator.evaluate(request)


def check_address(address: str | None) -> None:
    """A PressoError when nothing listens at a Ray cluster's ``host:port`` (or
    ``ray://host:port``) address; ``auto`` and None are left to Ray. Ray itself waits minutes
    for a head node that does not answer; a TCP connect says so in seconds."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdecimal():  # isdigit accepts '²', which int() refuses
        raise PressoError(
            f"runner.address: {address!r} is not a Ray address; give host:port (the head "
            "node's GCS port, e.g. 10.0.0.5:6379), ray://host:port, auto, or null for a local one"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_S):
            pass
    except OSError as err:
        raise PressoError(_no_cluster(address, err.strerror or str(err) or "timed out")) from None


def _no_cluster(address: str, why: str) -> str:
    return (
        f"runner.address: no Ray cluster answers at {address!r} ({why}); check that the "
        "cluster is up (`ray status` on its head node), or set runner.address to null to start "
        "a local one"
    )


_CONNECT_S = 5.0  # a head node on the same network answers a TCP connect in milliseconds


def _loopback_only() -> None:
    """Make the local Ray instance presso starts listen on 127.0.0.1 only: it runs with
    authentication off, so no other machine may reach it. Ray binds its servers to the node's
    IP address, which is the loopback one when Ray is told the machine is no cluster
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is imported, so also set on an
    already imported ray). A cluster the user names by address is the user's to secure."""
    import sys

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def connect_ray(address: str | None, *, cpus: int) -> Any:
    """The ``ray`` module, connected: to the cluster at ``address``, or to a local instance
    with ``cpus`` CPUs that presso starts (or the one this process already has)."""
    if not address:
        _loopback_only()
    try:
        import ray
    except ImportError:
        raise MissingExtraError("ray", "ray", "the ray runner") from None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        if address:
            check_address(address)
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as err:
                raise PressoError(_no_cluster(address, str(err))) from None
        else:
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return ray


class RayPool(Pool):
    """Evaluates on ``workers`` Ray actors, each holding the evaluator ``factory()`` returns
    there (``factory``: a picklable callable, e.g. ``presso.experiment.EvaluatorFactory``).

    address: an existing cluster (``"auto"`` or ``"ray://host:port"``); None starts a local one.
        On a cluster, nodes need not share a disk: the factory decides where a worker's caches
        live (``EvaluatorFactory(spec, build=True)``: under its own node's presso cache, built
        there from the same content address, instead of the driver's cache path).
    threads: torch threads per actor.

    A worker that dies (killed, out of memory, its node lost) is replaced by a new actor and
    its request evaluated again, up to ``RETRIES`` times: the run ends as it would have without
    the fault. An evaluation that fails inside a living worker is a failed result, as in-process.
    """

    RETRIES = 3

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        workers: int,
        address: str | None = None,
        threads: int = 1,
    ) -> None:
        ray = self._ray = connect_ray(address, cpus=workers)
        self._factory = factory
        self._threads = threads
        self._actor = ray.remote(num_cpus=1)(_EvaluatorActor)
        self.actors = [self._new_actor() for _ in range(workers)]
        self.replaced = 0  # workers that died and were replaced

    def _new_actor(self) -> Any:
        return self._actor.remote(self._factory, self._threads)

    def map(self, requests: Sequence[Request]) -> Iterator[tuple[int, Result]]:
        ray = self._ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError)
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(requests))
        tries = dict.fromkeys(range(len(requests)), 0)
        idle = list(self.actors)
        while queue or pending:
            while queue and idle:
                i, request = queue.pop(0)
                actor = idle.pop(0)
                pending[actor.evaluate.remote(request)] = (i, actor)
            done, _ = ray.wait(list(pending), num_returns=1)
            i, actor = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except lost as err:
                # The worker is gone: a new one takes its place and the request goes again.
                ray.kill(actor)
                fresh = self._new_actor()
                self.actors[self.actors.index(actor)] = fresh
                self.replaced += 1
                idle.append(fresh)
                tries[i] += 1
                if tries[i] <= self.RETRIES:
                    queue.insert(0, (i, requests[i]))
                    continue
                result = Result(fitness=None, error=f"ray worker died {tries[i]} times: {err}")
                yield i, result
                continue
            except Exception as err:  # failed inside a living worker: a failed evaluation
                result = Result(fitness=None, error=f"ray worker failed: {err}")
            idle.append(actor)
            yield i, result

    def pids(self) -> list[int]:
        """The workers' process ids (to watch them, or to kill one in a fault test)."""
        return self._ray.get([a.pid.remote() for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []


class _EvaluatorActor:
    """Holds one evaluator in a Ray worker process."""

    def __init__(self, factory: Callable[[], Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.evaluator = factory()

    def evaluate(self, request: Request) -> Result:
        return self.evaluator.evaluate(request)

    def pid(self) -> int:
        return os.getpid()


StoredResults = Mapping[tuple[int, int], tuple[Request, Result]]


def drive(
    strategy: Strategy,
    pool: Pool,
    *,
    stored: StoredResults | None = None,
    on_result: Callable[[int, int, Request, Result], None] | None = None,
    on_step: Callable[[int, Strategy], None] | None = None,
    max_steps: int | None = None,
) -> int:
    """Run ``strategy`` to completion on ``pool``; returns the number of new evaluations.

    stored: results of an earlier, interrupted run keyed by (step, position); a request
        equal to the stored one reuses its result instead of being evaluated again.
    on_result: called for every new evaluation (to record it) as soon as it finishes.
    on_step: called after every tell (progress display).
    """
    stored = stored or {}
    step, evaluated = 0, 0
    while not strategy.finished and (max_steps is None or step < max_steps):
        requests = strategy.ask()
        if not requests:
            break
        results: list[Result | None] = [None] * len(requests)
        todo = []
        for i, request in enumerate(requests):
            old = stored.get((step, i))
            if old is not None and old[0] == request:
                results[i] = old[1]
            else:
                todo.append(i)
        if todo:
            for j, result in pool.map([requests[i] for i in todo]):
                i = todo[j]
                results[i] = result
                evaluated += 1
                if on_result is not None:
                    on_result(step, i, requests[i], result)
        strategy.tell(requests, results)  # type: ignore[arg-type]
        if on_step is not None:
            on_step(step, strategy)
        step += 1
    return evaluated
