"""Structured candidates (heads and FFN channels kept) exported and run in their target's own
code: ONNX Runtime runs the ONNX graph with the smaller heads and channels, transformers loads
the smaller folder where one config width holds every block, and what no config can hold is
refused in one line naming the format that can."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from presso.cli import main
from presso.export import Source
from presso.store import ResultsStore

from .conftest import tiny_experiment

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="needs onnxruntime"
)

FEW = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
ATOL = 1e-4


def _search(write_experiment, tmp_path: Path, name: str, model: str) -> dict:
    exp = tiny_experiment(
        name=name,
        model=model,
        structured={"levels": [100, 75, 50, 25], "calibration": 4},
        space={"kind": "structured", "mean_bits": None, "kept_params": 60},
        search={"options": FEW},
        baselines=["uniform", "dp"],
    )
    assert main(["search", str(write_experiment(exp, f"{name}.yaml")), "--quiet"]) == 0
    return ResultsStore(str(tmp_path / "runs.db")).open(name).user_attrs


def _export(tmp_path: Path, run: str, fmt: str, out: Path, candidate: str = "search") -> int:
    store = str(tmp_path / "runs.db")
    return main(
        ["export", run, "--format", fmt, "--out", str(out), "--store", store,
         "--candidate", candidate]
    )  # fmt: skip


def _presso(attrs: dict, candidate: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows and what presso's evaluator gives for them under ``candidate``
    (logits of a causal LM, last hidden states of an encoder)."""
    evaluator = Source(attrs, candidate).evaluator()
    ids = evaluator.data.calibration[:4]
    return ids, evaluator.handle.forward(ids)


def _non_uniform(attrs: dict) -> str:
    """A candidate of the run whose blocks keep different widths."""
    for name, c in attrs["summary"]["candidates"].items():
        if len(set(c["levels"][0::2])) > 1 or len(set(c["levels"][1::2])) > 1:
            return name
    raise AssertionError("every candidate is uniform")


@pytest.mark.parametrize(
    ("model", "output"), [("tiny-llama", "logits"), ("tiny-bert", "last_hidden_state")]
)
def test_onnx_runs_the_smaller_heads_and_channels_as_presso_scored_them(
    write_experiment, tmp_path: Path, model: str, output: str
) -> None:
    from presso.onnx_model import make_session

    attrs = _search(write_experiment, tmp_path, "st", model)
    name = _non_uniform(attrs)
    out = tmp_path / "st.onnx"
    assert _export(tmp_path, "st", "onnx", out, name) == 0
    ids, expected = _presso(attrs, name)
    got = make_session(out).run([output], {"input_ids": ids.numpy()})[0]
    diff = float(np.abs(got - expected.numpy()).max())
    print(f"{model} {name}: max |difference| = {diff:.3g}")
    assert diff < ATOL
    import onnx

    dense = Source(attrs, name).handle
    weights = {i.name: tuple(i.dims) for i in onnx.load(out).graph.initializer}
    pruned = [
        unit
        for unit in dense.unit_names
        for key, shape in weights.items()
        if key.startswith(f"{unit}.weight")
        and sorted(shape) != sorted(dense.linear(unit).weight.shape)
    ]
    assert pruned  # really smaller MatMuls, not masks


def test_a_uniform_llama_candidate_is_a_smaller_transformers_folder(
    write_experiment, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    attrs = _search(write_experiment, tmp_path, "st", "tiny-llama")
    out = tmp_path / "pruned"
    assert _export(tmp_path, "st", "pruned", out, "baseline:uniform") == 0
    config = json.loads((out / "config.json").read_text())
    dense = Source(attrs, "baseline:uniform").handle.model.config
    assert config["intermediate_size"] < dense.intermediate_size
    assert config["num_key_value_heads"] <= dense.num_key_value_heads
    ids, expected = _presso(attrs, "baseline:uniform")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    diff = float((got - expected).abs().max())
    print(f"pruned folder: max |logit diff| = {diff:.3g}")
    assert diff < ATOL


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-bert"])
def test_widths_no_config_holds_are_refused_naming_onnx(
    write_experiment, tmp_path: Path, model: str, capsys
) -> None:
    attrs = _search(write_experiment, tmp_path, "st", model)
    name = _non_uniform(attrs)
    capsys.readouterr()
    out = tmp_path / "pruned"
    assert _export(tmp_path, "st", "pruned", out, name) == 2
    err = capsys.readouterr().err
    assert "--format onnx" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bits_on_pruned_heads_and_channels_export_as_presso_scored_them(
    write_experiment, tmp_path: Path
) -> None:
    """A joint search (bits x structured widths on the same layers): the ONNX graph runs the
    smaller MatMulNBits layers, and the uniform candidate's transformers folder holds the
    rounded kept weights; both give presso's outputs."""
    from transformers import AutoModelForCausalLM

    from presso.onnx_model import make_session

    exp = tiny_experiment(
        name="jt",
        compress={"operator": "rtn", "levels": [4, 8], "group_size": 32, "calibration": 4},
        structured={"levels": [100, 75, 50, 25], "calibration": 4},
        space={"kind": "joint", "mean_bits": 6.0, "kept_params": 70},
        search={"options": FEW},
        baselines=["uniform"],
    )
    assert main(["search", str(write_experiment(exp, "jt.yaml")), "--quiet"]) == 0
    attrs = ResultsStore(str(tmp_path / "runs.db")).open("jt").user_attrs
    kinds = attrs["kinds"]
    for name in ("search", "baseline:uniform"):
        levels = attrs["summary"]["candidates"][name]["levels"]
        assert any(k == "bits" and v < 16 for k, v in zip(kinds, levels))
        assert any(k == "structured" and v < 100 for k, v in zip(kinds, levels))
    out = tmp_path / "jt.onnx"
    assert _export(tmp_path, "jt", "onnx", out, "search") == 0
    ids, expected = _presso(attrs, "search")
    got = make_session(out).run(["logits"], {"input_ids": ids.numpy()})[0]
    assert float(np.abs(got - expected.numpy()).max()) < 1e-3
    folder = tmp_path / "pruned"
    assert _export(tmp_path, "jt", "pruned", folder, "baseline:uniform") == 0
    ids, expected = _presso(attrs, "baseline:uniform")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        got = model(input_ids=ids, use_cache=False).logits
    assert float((got - expected).abs().max()) < ATOL
