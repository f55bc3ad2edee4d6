"""What a resumed run replays, read from the store a few steps at a time.

A run resumed after 100,000 evaluations must not hold 100,000 records (a level per unit each)
at once: the store lists the run's evaluations without their levels (``ResultsStore.
evaluations``), which says which to replay, and each phase's :class:`Replay` reads their records
in chunks, in the order the runner asks for them (step by step), keeping one chunk.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from presso.store import CHUNK, Evaluation, Record, ResultsStore

Key = tuple[int, int]  # (step, index) within a phase


def latest(evaluations: Iterable[Evaluation]) -> dict[tuple[str, int, int], Evaluation]:
    """The latest stored evaluation of each (phase, step, index) (one evaluated again on resume
    is stored after the first try: the later wins), in the order each was first stored."""
    return {(e.phase, e.step, e.index): e for e in evaluations}


def to_replay(evaluations: Iterable[Evaluation]) -> tuple[dict[str, dict[Key, Evaluation]], int]:
    """Per phase, the evaluations a resumed run replays, by (step, index); and how many stored
    failures are left out.

    A failure with an error (a corrupt or missing file, memory, a dead worker) may have a cause
    that is gone now: replaying it would keep it forever, so it is evaluated again. A finite
    measurement, even a useless one, is replayed.
    """
    by_phase: dict[str, dict[Key, Evaluation]] = {}
    retried = 0
    for (phase, step, index), e in latest(evaluations).items():
        if e.error:
            retried += 1
            continue
        by_phase.setdefault(phase, {})[(step, index)] = e
    return by_phase, retried


def resume_state(
    store: ResultsStore, run: str, space: Any, chunk: int = CHUNK
) -> tuple[dict[str, Replay], int]:
    """What ``drive`` replays for each phase of a resumed run, and how many stored failures
    are evaluated again (see ``to_replay``)."""
    by_phase, retried = to_replay(store.evaluations(run))
    return {p: Replay(store, space, keys, chunk) for p, keys in by_phase.items()}, retried


class Replay(Mapping[Key, tuple[Any, Any]]):
    """One phase's stored results, ``{(step, index): (request, result)}`` as ``drive`` reads
    them, with the records read ``chunk`` at a time in (step, index) order: asked in that
    order, each record is read once and at most ``chunk`` are held."""

    def __init__(
        self, store: ResultsStore, space: Any, keys: dict[Key, Evaluation], chunk: int = CHUNK
    ) -> None:
        self._store, self._space, self._chunk = store, space, chunk
        self._keys = keys
        self._order = sorted(keys)
        self._held: dict[Key, tuple[Any, Any]] = {}
        self.read = 0  # records read from the store so far
        self.most_held = 0  # the most records held at once

    def __getitem__(self, key: Key) -> tuple[Any, Any]:
        if key not in self._keys:
            raise KeyError(key)
        if key not in self._held:
            start = bisect.bisect_left(self._order, key)
            keys = self._order[start : start + self._chunk]
            records = self._store.load([self._keys[k] for k in keys], self._chunk)
            self._held = {k: self._pair(r) for k, r in zip(keys, records)}
            self.read += len(keys)
            self.most_held = max(self.most_held, len(self._held))
        return self._held[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._keys)

    def _pair(self, rec: Record) -> tuple[Any, Any]:
        from presso.evaluation import Request, Result

        request = Request(
            config=self._space.from_dict(dict(zip(self._space.names, rec.levels))),
            tokens=rec.tokens,
            sample_seed=rec.sample_seed,
            tag=rec.tag,
        )
        result = Result(
            fitness=rec.fitness, metrics=rec.metrics, error=rec.error, seconds=rec.seconds
        )
        return request, result


def failures(store: ResultsStore, evaluations: list[Evaluation]) -> dict[str, Any]:
    """How many of the run's evaluations failed (the latest record of each; one evaluated again
    on resume counts as what it gave then), out of how many, and the first failure's message:
    a run that lost evaluations must say so, not look like a clean one. Reads one record."""
    last = list(latest(evaluations).values())
    failed = [e for e in last if e.fitness is None]
    first = None
    if failed:
        (rec,) = store.load(failed[:1])
        first = ((rec.error or "no finite fitness").strip().splitlines() or ["?"])[0][:200]
    return {"failed": len(failed), "evaluated": len(last), "first_failure": first}
