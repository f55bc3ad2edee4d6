"""Experiment files: every mistake is one line naming the file, the line, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
