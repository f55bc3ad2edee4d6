"""Hugging Face folder exports, loaded back by transformers in this process and compared with
presso's own evaluation of the same candidate:

* ``hf``: compressed-tensors weights (presso's codes, not a requantization) that
  ``AutoModelForCausalLM.from_pretrained`` decompresses;
* ``pruned``: a plain, smaller folder with dropped blocks removed and pruned zeros kept.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

if importlib.util.find_spec("compressed_tensors") is not None:
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

from presso.cli import main
from presso.export import Source
from presso.plan import Plan
from presso.store import ResultsStore

from .conftest import tiny_experiment

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("compressed_tensors") is None, reason="needs compressed-tensors"
)

#: A handful of evaluations: one generation of two offspring, one selection stage.
FEW = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}
#: Max |logit difference| allowed between the loaded folder and presso's evaluator (fp32).
ATOL = 1e-4


def _search(write_experiment, tmp_path: Path, name: str, **overrides: object) -> dict:
    exp = tiny_experiment(name=name, search={"options": FEW}, baselines=[], **overrides)
    assert main(["search", str(write_experiment(exp, f"{name}.yaml")), "--quiet"]) == 0
    return ResultsStore(str(tmp_path / "runs.db")).open(name).user_attrs


def _export(tmp_path: Path, run: str, fmt: str, out: Path, *extra: str) -> int:
    store = str(tmp_path / "runs.db")
    return main(["export", run, "--format", fmt, "--out", str(out), "--store", store, *extra])


def _presso_logits(attrs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration windows and the logits presso's evaluator gives the search's winner."""
    evaluator = Source(attrs, "search").evaluator()
    ids = evaluator.data.calibration[:4]
    return ids, evaluator.handle.forward(ids)


def _loaded_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _block(name: str) -> int:
    return int(name.split(".")[2])  # model.layers.<block>...


def _renumbered(name: str, gone: int) -> str:
    """A unit's name once block ``gone`` is removed (later blocks move down by one)."""
    block = _block(name)
    return name.replace(f"layers.{block}.", f"layers.{block - (block > gone)}.", 1)


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize(
    ("operator", "group_size", "symmetric"), [("rtn", 32, False), ("gptq", None, True)]
)
def test_hf_folder_loads_in_transformers_with_presso_codes(
    write_experiment, tmp_path: Path, operator: str, group_size: int | None, symmetric: bool
) -> None:
    compress = {"operator": operator, "group_size": group_size, "symmetric": symmetric}
    attrs = _search(write_experiment, tmp_path, "bits", compress=compress)
    out = tmp_path / "hf"
    umask = os.umask(0o022)
    try:
        assert _export(tmp_path, "bits", "hf", out) == 0
    finally:
        os.umask(umask)
    # Normal permissions, as any file the user makes: not the private ones of temporary files.
    modes = {p.relative_to(out).as_posix(): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert out.stat().st_mode & 0o777 == 0o755 and set(modes.values()) == {0o644}

    qc = _config(out)["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    plan = Plan.from_dict(json.loads((out / "presso_plan.json").read_text()))
    targets = {t: g for g in qc["config_groups"].values() for t in g["targets"]}
    assert set(targets) == set(plan.entries()) and len(targets) == 28
    for name, entry in plan.entries().items():
        weights = targets[name]["weights"]
        assert (weights["num_bits"], weights["group_size"]) == (entry["bits"], group_size)
        assert weights["symmetric"] is symmetric
    assert (out / "tokenizer_config.json").is_file() and (out / "generation_config.json").is_file()

    # The file holds presso's own codes and grids, shifted to compressed-tensors' signed range.
    source, stored = Source(attrs, "search"), _tensors(out)
    for name, entry in plan.entries().items():
        qw, offset = source.quantized(name, entry["bits"]), 1 << (entry["bits"] - 1)
        # Codes packed into int32 words, zero points too (asymmetric grids): bits per weight.
        assert targets[name]["format"] == "pack-quantized"
        packed, shape = stored[f"{name}.weight_packed"], stored[f"{name}.weight_shape"]
        assert packed.dtype == torch.int32 and f"{name}.weight" not in stored
        assert packed.numel() * 32 == shape.prod() * entry["bits"]
        codes = unpack_from_int32(packed, entry["bits"], shape)
        if symmetric:
            assert f"{name}.weight_zero_point" not in stored
        else:  # packed too, padded to the shape transformers expects (see presso.export._hf)
            zero_point = stored[f"{name}.weight_zero_point"]
            assert zero_point.dtype == torch.int32 and zero_point.shape == qw.zeros.shape
            zero_point = unpack_from_int32(zero_point, entry["bits"], qw.zeros.shape, packed_dim=0)
            assert torch.equal(zero_point.to(torch.int16) + offset, qw.zeros.to(torch.int16))
        assert codes.dtype == torch.int8
        assert torch.equal(codes.to(torch.int16) + offset, qw.codes.to(torch.int16))
        assert torch.equal(stored[f"{name}.weight_scale"], qw.scales)

    # On disk, the quantized units take what presso's size_mb says (bits per weight) plus
    # their scales and zero points: 32-bit words per group row here, at group size 32.
    unit_bytes = sum(
        t.numel() * t.element_size()
        for key, t in stored.items()
        if key.rsplit(".", 1)[0] in plan.entries()
    )
    size_mb = attrs["summary"]["candidates"]["search"]["size_mb"]
    groups = sum(stored[f"{n}.weight_scale"].numel() for n in plan.entries())
    grids = groups * (4 if symmetric else 8)  # fp32 scale (+ padded int32 zero point)
    print(f"hf: units {unit_bytes} B on disk, size_mb {size_mb * 1e6:.0f} B")
    assert size_mb * 1e6 < unit_bytes <= size_mb * 1e6 + grids + 16 * len(plan.entries())

    ids, expected = _presso_logits(attrs)
    # The candidate is not the dense model, so agreeing with it below means something.
    assert (source.handle.forward(ids) - expected).abs().max().item() > 100 * ATOL
    diff = (_loaded_logits(out, ids) - expected).abs().max().item()
    print(f"hf {operator} g{group_size} sym={symmetric}: max |logit diff| = {diff:.3g}")
    assert diff < ATOL

    # Never silently overwritten; --force replaces only a folder presso wrote, atomically.
    (out / "stale.txt").write_text("a file of the user's")
    assert _export(tmp_path, "bits", "hf", out) == 2
    assert _export(tmp_path, "bits", "hf", out, "--force") == 2
    assert (out / "stale.txt").is_file()
    (out / "stale.txt").unlink()
    (out / "model.safetensors").write_bytes(b"an older export")
    assert _export(tmp_path, "bits", "hf", out, "--force") == 0
    assert (_loaded_logits(out, ids) - expected).abs().max().item() < ATOL
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.")] == []


def test_joint_candidate_as_hf_and_pruned_folders(write_experiment, tmp_path: Path) -> None:
    attrs = _search(
        write_experiment,
        tmp_path,
        "joint",
        sparsity={"operator": "magnitude", "levels": [0, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 4.0, "mean_sparsity": 25, "dropped": 1},
    )
    ids, expected = _presso_logits(attrs)
    hf, pruned, dense = tmp_path / "hf", tmp_path / "pruned", tmp_path / "dense"
    assert _export(tmp_path, "joint", "hf", hf) == 0
    assert _export(tmp_path, "joint", "pruned", pruned) == 0
    plan = Plan.from_dict(json.loads((hf / "presso_plan.json").read_text()))
    (gone,) = plan.dropped
    both = [n for n, e in plan.entries().items() if "bits" in e and e.get("sparsity")]
    assert both  # some units are pruned and quantized

    for folder in (hf, pruned):
        assert _config(folder)["num_hidden_layers"] == 3
        diff = (_loaded_logits(folder, ids) - expected).abs().max().item()
        print(f"joint {folder.name}: max |logit diff| = {diff:.3g}")
        assert diff < ATOL

    # hf: the pruned-and-quantized units store their pruned entries as the grid's zero code.
    source, stored = Source(attrs, "search"), _tensors(hf)
    assert not any(key.startswith("model.layers.3.") for key in stored)
    kept = [n for n in both if _block(n) != _block(gone)]
    assert kept
    masks = {
        name: source.sparse(name, plan.entries()[name]["sparsity"]).weight == 0 for name in kept
    }
    for name, pruned_mask in masks.items():
        assert pruned_mask.float().mean() >= 0.5
        new = _renumbered(name, _block(gone))
        bits = plan.entries()[name]["bits"]
        codes = unpack_from_int32(stored[f"{new}.weight_packed"], bits, pruned_mask.shape)
        zero = stored[f"{new}.weight_zero_point"]
        zero = unpack_from_int32(zero, bits, zero.shape, packed_dim=0)
        assert torch.equal(codes[pruned_mask], zero.repeat_interleave(32, dim=1)[pruned_mask])

    # pruned: a plain folder (no quantization_config), smaller than the dense model, with the
    # pruned entries stored as zeros.
    assert "quantization_config" not in _config(pruned)
    source.handle.model.save_pretrained(dense)
    size = {f: (f / "model.safetensors").stat().st_size for f in (pruned, dense)}
    print(f"model.safetensors: pruned {size[pruned]} B, dense {size[dense]} B")
    assert size[pruned] < size[dense]
    stored = _tensors(pruned)
    for name, pruned_mask in masks.items():
        weight = stored[f"{_renumbered(name, _block(gone))}.weight"]
        assert torch.all(weight[pruned_mask] == 0)


def test_depth_candidate_as_shorter_folders(write_experiment, tmp_path: Path) -> None:
    attrs = _search(
        write_experiment,
        tmp_path,
        "depth",
        space={"kind": "depth", "mean_bits": None, "dropped": 1},
    )
    ids, expected = _presso_logits(attrs)
    for fmt in ("pruned", "hf"):
        out = tmp_path / fmt
        assert _export(tmp_path, "depth", fmt, out) == 0
        config = _config(out)
        # Nothing is quantized: both are plain folders, one block shorter.
        assert config["num_hidden_layers"] == 3 and "quantization_config" not in config
        diff = (_loaded_logits(out, ids) - expected).abs().max().item()
        print(f"depth {fmt}: max |logit diff| = {diff:.3g}")
        assert diff < ATOL


def test_forbidden_candidates_exit_2_and_write_nothing(
    write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _search(
        write_experiment,
        tmp_path,
        "sub",
        space={"kind": "depth", "mean_bits": None, "dropped": 1, "granularity": "sublayer"},
    )
    capsys.readouterr()
    for fmt in ("hf", "pruned"):
        out = tmp_path / fmt
        assert _export(tmp_path, "sub", fmt, out) == 2
        err = capsys.readouterr().err
        assert "sublayers (model.layers." in err and "--format plan" in err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
