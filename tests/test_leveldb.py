"""The level database: built once, content-addressed, resumable, memory-mapped."""

from __future__ import annotations

import os

import pytest
import torch

from presso.config import Experiment
from presso.experiment import Setup

from .conftest import tiny_experiment


def _setup(**compress: object) -> Setup:
    return Setup(Experiment.model_validate(tiny_experiment(compress=compress)))


def test_build_once_then_nothing_to_do() -> None:
    s = _setup(group_size=16)
    s.level_db("bits").build(s.data.calibration[:4])
    assert s.level_db("bits").is_complete()
    assert s.level_db("bits").build(s.data.calibration[:4]) == 0.0
    files = list(s.level_db("bits").folder.rglob("*.safetensors"))
    assert len(files) == len(s.handle.units) * 4


def test_content_addressing() -> None:
    a, b = _setup(group_size=16), _setup(group_size=32)
    assert a.level_db("bits").key != b.level_db("bits").key  # operator options change the address
    rtn1 = _setup()
    rtn2 = Setup(Experiment.model_validate(tiny_experiment(data={"seed": 1})))
    assert (
        rtn1.level_db("bits").key == rtn2.level_db("bits").key
    )  # RTN needs no data: calibration does not matter
    g1 = _setup(operator="gptq")
    g2 = Setup(
        Experiment.model_validate(tiny_experiment(data={"seed": 1}, compress={"operator": "gptq"}))
    )
    assert (
        g1.level_db("bits").key != g2.level_db("bits").key
    )  # GPTQ's levels depend on its calibration data


def test_interrupted_build_resumes_without_redoing_work() -> None:
    s = _setup(group_size=64, symmetric=True)
    calls = []

    def interrupting(items, total, desc):
        for i, item in enumerate(items):
            if i == 3:  # three units done, four levels each
                raise KeyboardInterrupt
            calls.append(item)
            yield item

    with pytest.raises(KeyboardInterrupt):
        s.level_db("bits").build(None, progress=interrupting)
    written = {p: p.stat().st_mtime_ns for p in s.level_db("bits").folder.rglob("*.safetensors")}
    assert len(written) == 12
    assert not list(
        s.level_db("bits").folder.rglob("*.tmp")
    )  # atomic writes leave no partial files
    assert len(s.level_db("bits").missing()) == len(s.handle.units) * 4 - 12
    s.level_db("bits").build(None)
    assert s.level_db("bits").is_complete()
    for path, mtime in written.items():
        assert path.stat().st_mtime_ns == mtime


def test_levels_reconstruct_and_errors_fall_with_bits() -> None:
    s = _setup(group_size=16)
    s.level_db("bits").build(None)
    unit = s.handle.units[5].name
    dense = s.handle.dense_weight(unit)
    w8 = s.level_db("bits").weight(unit, 8)
    assert w8.shape == dense.shape and w8.dtype == torch.float32
    assert (w8 - dense).abs().max() < 0.02 * dense.abs().max()
    errors = s.level_db("bits").unit_errors()[unit]
    assert errors[2] > errors[3] > errors[4] > errors[8]


def test_gptq_database_uses_calibration() -> None:
    s = _setup(operator="gptq", group_size=32)
    seconds = s.level_db("bits").build(s.data.calibration[:4])
    assert seconds > 0 and s.level_db("bits").is_complete()
    rtn = _setup(group_size=32)
    rtn.level_db("bits").build(None)
    # GPTQ's output error is not worse than RTN's on most units (its purpose).
    g, r = s.level_db("bits").unit_errors(), rtn.level_db("bits").unit_errors()
    better = sum(g[u][3] <= r[u][3] * 1.0001 for u in g)
    assert better >= 0.8 * len(g)
    assert os.path.isfile(s.level_db("bits").folder / "manifest.json")
