"""Experiment files: every mistake is one line naming the file, the line, the field and the fix."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from presso.cli import main
from presso.config import load_experiment
from presso.errors import PressoError

from .conftest import tiny_experiment


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    exp = load_experiment(_write(tmp_path, yaml.safe_dump(tiny_experiment())))
    assert exp.model == "tiny-llama"
    assert exp.compress.levels == [2, 3, 4, 8]
    assert exp.evaluation.batch_size == 4


def test_unknown_key_names_file_line_and_allowed_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny-llama\nspace:\n  mean_bits: 3\n  mean_bitz: 2\n")
    with pytest.raises(PressoError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert f"{path}:4: space.mean_bitz: unknown key" in msg
    assert "mean_bits" in msg  # the allowed keys are listed


def test_wrong_type_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny-llama\nspace:\n  mean_bits: three\n")
    with pytest.raises(PressoError, match=r"exp.yaml:3: space.mean_bits: .*'three'"):
        load_experiment(path)


def test_missing_required_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny-llama\n")
    with pytest.raises(PressoError, match=r"space: required"):
        load_experiment(path)


def test_budget_no_configuration_can_meet(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "model: tiny-llama\ncompress:\n  levels: [3, 4]\nspace:\n  mean_bits: 2.5\n"
    )
    with pytest.raises(
        PressoError, match=r"exp.yaml:5: space.mean_bits: no configuration can meet"
    ):
        load_experiment(path)


def test_missing_model_and_corpus(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: ./nowhere\nspace: {mean_bits: 3}\n")
    with pytest.raises(
        PressoError, match=r"exp.yaml:1: model: './nowhere' is not a built-in model"
    ):
        load_experiment(path)
    path = _write(
        tmp_path, "model: tiny-llama\ndata:\n  corpus: missing.txt\nspace: {mean_bits: 3}\n"
    )
    with pytest.raises(
        PressoError, match=r"exp.yaml:3: data.corpus: 'missing.txt' is not a built-in corpus"
    ):
        load_experiment(path)


def test_unknown_strategy_and_option(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny-llama\nspace: {mean_bits: 3}\nsearch:\n  strategy: evo\n")
    with pytest.raises(
        PressoError, match=r"search.strategy: unknown strategy 'evo'; available: .*evopress"
    ):
        load_experiment(path)
    text = "model: tiny-llama\nspace: {mean_bits: 3}\nsearch:\n  options:\n    generationz: 3\n"
    with pytest.raises(
        PressoError, match=r"exp.yaml:5: search.options.generationz: unknown option"
    ):
        load_experiment(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("generations: ten", "generations: Input should be a valid integer.*'ten'.*give int"),
        ("stages: abc", "stages: .*not allowed.*give Sequence"),
        ("stages: [[128]]", r"stages.0.1: required \(got \[128\]\)"),
        ("stages: [[128, 2], [256, 2]]", "stages.1: the last stage must keep 1 survivor"),
        ("offspring: 0", "offspring: must be >= 1, got 0"),
        ("screen: -3", "screen: must be >= 0"),
        ("start: best", "start: must be one of auto, dp, uniform, got 'best'"),
        ("ridge: .inf", "ridge: Input should be a finite number"),
    ],
)
def test_strategy_options_are_checked_with_the_file(
    tmp_path: Path, option: str, message: str
) -> None:
    text = f"model: tiny-llama\nspace: {{mean_bits: 3}}\nsearch:\n  options:\n    {option}\n"
    with pytest.raises(PressoError, match=r"exp.yaml:5: search.options." + message):
        load_experiment(_write(tmp_path, text))


def test_strategy_options_are_taken_as_the_constructor_takes_them(tmp_path: Path) -> None:
    text = "model: tiny-llama\nspace: {mean_bits: 3}\nsearch:\n  options: {generations: '4'}\n"
    assert load_experiment(_write(tmp_path, text)).search.options == {"generations": 4}
    text = "model: tiny-llama\nspace: {mean_bits: 3}\nsearch: {seed: -1}\n"
    with pytest.raises(PressoError, match=r"exp.yaml:3: search.seed: .*greater than or equal to 0"):
        load_experiment(_write(tmp_path, text))


def test_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(PressoError, match=r"exp.yaml:\d+: not valid YAML"):
        load_experiment(_write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "model: tiny-llama\nspace:\n  mean_bits: 3\n  mean_bits: 4\n",
            "exp.yaml:4: .*'mean_bits'.*line 3",
        ),
        (
            "model: tiny-llama\nspace: {mean_bits: 3, mean_bits: 4}\n",
            "exp.yaml:2: .*'mean_bits'.*line 2",
        ),
        (
            "model: tiny-llama\nspace: {mean_bits: 3}\nmodel: smollm2-135m\n",
            "exp.yaml:3: .*'model'.*line 1",
        ),
    ],
)
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, where: str) -> None:
    # YAML loaders let the last one win: the earlier line would be ignored unseen.
    with pytest.raises(PressoError, match=where + ".*keep one"):
        load_experiment(_write(tmp_path, text))


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = "model: tiny-llama\nbase: &b {mean_bits: 3, kind: bits}\nspace: {<<: *b, mean_bits: 4}\n"
    with pytest.raises(PressoError, match="base: unknown key"):  # parsed: only the key is unknown
        load_experiment(_write(tmp_path, text))


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _write(tmp_path, "model: tiny-llama\nspace:\n  mean_bits: 3\n  oops: 1\n")
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("presso: ") and "Traceback" not in err


def test_unknown_objective_names_its_line_and_the_choices(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "model: tiny-llama\nspace:\n  mean_bits: 3\nobjectives: [kl, mean_bitz]\n"
    )
    with pytest.raises(
        PressoError,
        match=r"exp.yaml:4: objectives.1: unknown objective 'mean_bitz'; choose from kl, ppl",
    ):
        load_experiment(path)


def test_objective_the_run_does_not_measure_stores_nothing(
    write_experiment, tmp_path: Path, capsys
) -> None:
    exp = tiny_experiment(name="unmeasured", objectives=["kl", "mean_sparsity"])
    assert main(["search", str(write_experiment(exp)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not measure 'mean_sparsity'" in err and "kl, ppl, mean_bits" in err
    assert "Traceback" not in err
    assert main(["runs", "--store", str(tmp_path / "runs.db")]) in (0, 2)
    assert "unmeasured" not in capsys.readouterr().out  # nothing was stored for it


# ---------------------------------------------------------------- fuzzing

#: A valid experiment (validation only: nothing here loads a model).
FUZZ_BASE = tiny_experiment(name="fuzz", evaluation={"batch_size": 4})

#: Where a mutation lands: every field above, and options and fields it leaves out.
FUZZ_PATHS = sorted(
    {
        *(
            (section, key)
            for section, value in FUZZ_BASE.items()
            if isinstance(value, dict)
            for key in value
        ),
        *((key,) for key in FUZZ_BASE),
        *(
            ("search", "options", key)
            for key in ("generations", "offspring", "stages", "start", "screen", "ridge", "initial")
        ),
        ("space", "dropped"),
        ("runner", "workers"),
        ("hardware", "backend"),
        ("evaluation", "cache_mb"),
    }
)

#: The values the issue's cases use, and more of their kind.
FUZZ_VALUES = st.one_of(
    st.sampled_from(
        ["ten", "abc", "best", "", [[128]], [], {}, None, -1, 0, -3, 10**12, 10**40, 1e308]
        + [float("inf"), float("nan"), "x" * 3000, "<a href=x>y</a>", [1, "a"], {"a": 1}]
    ),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)


def _set(exp: dict, path: tuple, value: object) -> dict:
    exp = json.loads(json.dumps(exp))  # a deep copy
    node = exp
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return exp


def _assert_refused_in_one_line(path: Path, store: Path) -> None:
    """``presso search`` on an experiment that does not validate: exit 2, one line naming the
    file (and its line and field where it has them), no traceback, no store."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["search", str(path), "--store", str(store), "--quiet"]) == 2
    text = err.getvalue()
    assert text.startswith(f"presso: {path}") and text.count("\n") == 1, text
    assert "Traceback" not in text and len(text) < 1000, text
    assert not store.exists() and not store.parent.exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FUZZ_PATHS), value=FUZZ_VALUES)
@example(path=("search", "options", "generations"), value="ten")
@example(path=("search", "options", "stages"), value="abc")
@example(path=("search", "options", "stages"), value=[[128]])
@example(path=("search", "seed"), value=-1)
@example(path=("search", "options", "offspring"), value=0)
@example(path=("search", "options", "screen"), value=-3)
@example(path=("search", "options", "start"), value="best")
@example(path=("space", "mean_bits"), value=float("inf"))
@example(path=("space", "mean_bits"), value=1e308)
@example(path=("data", "seed"), value=-1)
@example(path=("evaluation", "batch_size"), value=10**12)
@example(path=("name",), value="")
@example(path=("model",), value="m" * 3000)
def test_fuzzed_experiment_files_are_refused_in_one_line_naming_the_field(
    tmp_path_factory: pytest.TempPathFactory, path: tuple, value: object
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    file = folder / "exp.yaml"
    file.write_text(yaml.safe_dump(_set(FUZZ_BASE, path, value), sort_keys=False))
    store = folder / "runs" / "presso.db"
    try:
        load_experiment(file)
    except PressoError as err:
        # FILE:LINE: FIELD: what; the field is a dotted path of the file's keys.
        assert re.match(rf"{re.escape(str(file))}:\d+: [\w.]+: \S", str(err)), str(err)
        _assert_refused_in_one_line(file, store)
    assert not store.parent.exists()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(str.encode)))
@example(
    data=b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
)
@example(data=b"model: " + b"[" * 5000)
@example(data="model: tiny-llama\n".encode("utf-16"))
def test_fuzzed_bytes_are_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    file = folder / "exp.yaml"
    file.write_bytes(data)
    with pytest.raises(PressoError):  # none of these has a model and a space
        load_experiment(file)
    _assert_refused_in_one_line(file, folder / "runs" / "presso.db")
