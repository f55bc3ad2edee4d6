"""The results store opened by several processes at once: a new store is set up once, and
every opener gets it (a search, `presso show` and the dashboard may all start together)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from presso import store
from presso.errors import PressoError
from presso.store import ResultsStore


def _open_together(path: Path, openers: int) -> list[BaseException]:
    start = threading.Barrier(openers)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            ResultsStore(str(path)).runs()
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_new_store_opened_at_once_by_many(tmp_path: Path) -> None:
    # Without the retry, six openers of a new SQLite store fail on nearly every try: one
    # of them hits a table or version row another has just made.
    for i in range(3):
        path = tmp_path / f"runs{i}.db"
        assert _open_together(path, openers=6) == []
        assert ResultsStore(str(path)).runs() == []


def test_a_file_that_is_no_store_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    sleep = store.time.sleep

    def wait(seconds: float) -> None:
        # Only this thread's waits are the store's retries: time.sleep is global, and threads
        # other tests left behind (seen in a full run: 30 000 calls of 0.1 s) sleep too.
        if threading.current_thread() is threading.main_thread():
            waits.append(seconds)
        else:
            sleep(seconds)

    monkeypatch.setattr(store.time, "sleep", wait)
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(PressoError, match=r"notes\.db: cannot open it"):
        ResultsStore(str(path))
    assert waits == []  # not retried as if another process were setting it up
    assert path.read_text().startswith("these are my notes")  # and left as it was
