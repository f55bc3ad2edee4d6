"""Fuzzed experiment and sweep files against a store that already holds a run: wrong types,
unknown and missing keys, bad nesting, bad encodings and bytes. Each is refused by the CLI in
one line (``presso: ...``) with exit 2 and no traceback, and the store is left byte for byte
as it was: a mistake in a file never costs the user a result."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from presso.cli import main
from presso.config import load_experiment
from presso.errors import PressoError
from presso.store import ResultsStore
from presso.sweep import load_sweep

from .conftest import tiny_experiment

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def store_with_run(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> Path:
    """A store holding one finished run of the tiny experiment (made once for the module)."""
    folder = tmp_path_factory.mktemp("fuzz-store")
    store = folder / "runs.db"
    exp = {**tiny_experiment(name="kept"), "store": str(store)}
    exp["search"]["options"] = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
    (folder / "kept.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["search", str(folder / "kept.yaml"), "--quiet"]) == 0
    return store


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_refused(argv: list[str], store: Path, before: str) -> None:
    """The CLI refuses ``argv`` in one line, exit 2, no traceback; ``store`` is unchanged."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    text = err.getvalue()
    assert code == 2, (code, text, out.getvalue()[-500:])
    assert text.startswith("presso: ") and text.count("\n") == 1, text
    assert "Traceback" not in text and len(text) < 1200, text
    assert _digest(store) == before, "the store changed"
    assert [r["name"] for r in ResultsStore(str(store), read_only=True).runs()] == ["kept"]


# ---------------------------------------------------------------- structured mutations

#: Values of every kind a hand-edited file holds by mistake.
VALUES = st.one_of(
    st.sampled_from(
        ["ten", "", "x" * 2000, [], {}, None, -1, 0, 10**40, 1e308, float("nan"), [[1]]]
        + [{"a": {"b": [1, {"c": None}]}}, [1, "a", None], True, "\x85\u2028é\ufeff"]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)

BASE_EXP = tiny_experiment(name="fuzzed")

EXP_PATHS = sorted(
    {
        *((k,) for k in BASE_EXP),
        *((s, k) for s, v in BASE_EXP.items() if isinstance(v, dict) for k in v),
        ("search", "options", "generations"),
        ("search", "options", "stages"),
        ("space", "unknown_knob"),
        ("nonsense",),
        ("data", "corpus", "deeper"),
    }
)

SWEEP_PATHS = [
    ("name",),
    ("experiment",),
    ("grid",),
    ("grid", "space.mean_bits"),
    ("grid", "search.seed"),
    ("grid", "space"),
    ("grid", "data.seq_len.x"),
    ("grid", "name"),
    ("grid", "bogus.field"),
    ("runs",),
    ("runs", 0),
    ("runs", 0, "search.seed"),
    ("runs", 0, "space.mean_bits"),
    ("store",),
    ("version",),
    ("surplus",),
    *(("experiment", *p) for p in EXP_PATHS),
]


def _mutate(doc: Any, path: tuple, value: Any, *, delete: bool) -> Any:
    """A deep copy of ``doc`` with ``path`` set to ``value`` (or removed), making the sections
    on the way where they are missing or are not mappings (bad nesting)."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for i, key in enumerate(path[:-1]):
        if isinstance(node, list):
            key = min(key, len(node) - 1) if node else 0
            if not node:
                node.append(None)
            nxt = node[key]
        else:
            nxt = node.get(key)
        if not isinstance(nxt, (dict, list)):
            nxt = [{}] if isinstance(path[i + 1], int) else {}
            node[key] = nxt
        node = nxt
    last = path[-1]
    if isinstance(node, list):
        last = min(last, len(node) - 1) if node else 0
        if not node:
            node.append(None)
    if delete:
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            node.pop(last)
    else:
        node[last] = value
    return doc


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _valid(load: Any, path: Path) -> bool:
    try:
        load(path)
    except PressoError:
        event("refused")  # --hypothesis-show-statistics: how many cases reach the CLI
        return False
    event("still valid")
    return True


@FUZZ
@given(path=st.sampled_from(EXP_PATHS), value=VALUES, delete=st.booleans())
@example(path=("model",), value=None, delete=True)  # a required key missing
@example(path=("space",), value=[{"mean_bits": 3}], delete=False)  # a list for a section
@example(path=("data", "corpus", "deeper"), value=1, delete=False)  # a field made a section
@example(path=("store",), value=["a.db"], delete=False)
def test_fuzzed_experiment_file_is_refused_and_the_store_kept(
    store_with_run: Path,
    tmp_path_factory: pytest.TempPathFactory,
    path: tuple,
    value: Any,
    delete: bool,
) -> None:
    before = _digest(store_with_run)
    file = tmp_path_factory.mktemp("exp") / "exp.yaml"
    doc = _mutate({**BASE_EXP, "store": str(store_with_run)}, path, value, delete=delete)
    file.write_text(_dump(doc))
    if _valid(load_experiment, file):
        return  # the mutation left a valid experiment: nothing to refuse
    _assert_refused(["search", str(file), "--quiet"], store_with_run, before)
    _assert_refused(["search", str(file), "--resume", "--quiet"], store_with_run, before)


SWEEP = {"name": "sw", "experiment": "base.yaml", "grid": {"space.mean_bits": [2.5, 3.0]}}


@FUZZ
@given(
    path=st.sampled_from(SWEEP_PATHS),
    value=VALUES,
    delete=st.booleans(),
    inline=st.booleans(),
)
@example(path=("experiment",), value=None, delete=True, inline=False)
@example(path=("grid", "space"), value={"mean_bits": [3]}, delete=False, inline=False)
@example(path=("runs", 0), value="seed=1", delete=False, inline=False)
@example(path=("experiment", "space", "mean_bits"), value="x", delete=False, inline=True)
@example(path=("experiment", "model"), value=None, delete=True, inline=False)
def test_fuzzed_sweep_file_is_refused_and_the_store_kept(
    store_with_run: Path,
    tmp_path_factory: pytest.TempPathFactory,
    path: tuple,
    value: Any,
    delete: bool,
    inline: bool,
) -> None:
    """The sweep file, or (``experiment.*`` paths) its base experiment, in a file of its own
    or inline in the sweep."""
    before = _digest(store_with_run)
    folder = tmp_path_factory.mktemp("sweep")
    base = {**BASE_EXP, "store": str(store_with_run)}
    sweep: Any = dict(SWEEP)
    if path[0] == "experiment" and len(path) > 1:
        base = _mutate(base, path[1:], value, delete=delete)
    else:
        sweep = _mutate(sweep, path, value, delete=delete)
    if inline and isinstance(sweep, dict) and sweep.get("experiment") == "base.yaml":
        sweep["experiment"] = base
    (folder / "base.yaml").write_text(_dump(base))
    file = folder / "sweep.yaml"
    file.write_text(_dump(sweep))
    if _valid(load_sweep, file):
        # Valid: its runs are new to the store, so this is no refusal to test; a sweep named
        # like the stored run is refused without --resume, which is checked below.
        return
    _assert_refused(["sweep", str(file), "--quiet"], store_with_run, before)
    _assert_refused(["sweep", str(file), "--resume", "--quiet"], store_with_run, before)


# ---------------------------------------------------------------- bytes and encodings

ENCODED = st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig", "shift_jis"])


def _encodings(text: str) -> st.SearchStrategy[bytes]:
    return ENCODED.map(lambda enc: text.encode(enc, errors="replace"))


def _damaged(text: str) -> st.SearchStrategy[bytes]:
    """``text`` encoded oddly, or with bytes flipped, cut or inserted (NULs, invalid UTF-8)."""
    raw = text.encode()

    def flip(args: tuple[int, bytes]) -> bytes:
        at, junk = args
        at %= len(raw)
        return raw[:at] + junk + raw[at + len(junk) :]

    return st.one_of(
        _encodings(text),
        st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8)).map(flip),
        st.tuples(
            st.integers(0, 10**6), st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b"\t"])
        ).map(lambda a: raw[: a[0] % len(raw)] + a[1] + raw[a[0] % len(raw) :]),
        st.integers(0, len(raw) - 1).map(lambda n: raw[:n]),
        st.binary(max_size=300),
    )


def _sweep_text(store: Path) -> str:
    return _dump({**SWEEP, "store": str(store)})


@FUZZ
@given(which=st.sampled_from(["experiment", "sweep", "sweep-base"]), data=st.data())
@example(which="sweep", data=None)
def test_fuzzed_bytes_are_refused_and_the_store_kept(
    store_with_run: Path, tmp_path_factory: pytest.TempPathFactory, which: str, data: Any
) -> None:
    before = _digest(store_with_run)
    folder = tmp_path_factory.mktemp("bytes")
    exp_text = _dump({**BASE_EXP, "store": str(store_with_run)})
    sweep_text = _sweep_text(store_with_run)
    (folder / "base.yaml").write_text(exp_text)
    (folder / "sweep.yaml").write_text(sweep_text)
    target = {"experiment": "base.yaml", "sweep": "sweep.yaml", "sweep-base": "base.yaml"}[which]
    source = sweep_text if which == "sweep" else exp_text
    blob = source.encode("utf-16") if data is None else data.draw(_damaged(source))
    (folder / target).write_bytes(blob)
    command = "search" if which == "experiment" else "sweep"
    file = folder / ("base.yaml" if command == "search" else "sweep.yaml")
    if _valid(load_experiment if command == "search" else load_sweep, file):
        return  # the damage left a file that still means something valid
    _assert_refused([command, str(file), "--quiet"], store_with_run, before)


def test_a_valid_sweep_over_a_stored_run_is_refused_without_resume(
    store_with_run: Path, tmp_path: Path
) -> None:
    """Not a fuzz case but its boundary: a sweep whose run exists already touches nothing."""
    before = _digest(store_with_run)
    (tmp_path / "base.yaml").write_text(_dump({**BASE_EXP, "store": str(store_with_run)}))
    (tmp_path / "sweep.yaml").write_text(
        _dump({"name": "kept", "experiment": "base.yaml", "runs": [{}]})
    )
    _assert_refused(["sweep", str(tmp_path / "sweep.yaml"), "--quiet"], store_with_run, before)
