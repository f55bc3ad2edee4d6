"""The plan: its file format (``presso_plan`` 1) kept byte for byte, reading plan files with
clear errors, levels and settings, and the content digest cached builds are keyed by."""

from __future__ import annotations

import json

import pytest

from presso.errors import PressoError
from presso.export import build_plan
from presso.plan import Plan
from presso.profilers import levels_plan
from presso.spaces import SearchSpace, bits_dims, depth_dims, sparsity_dims

#: A finished joint run (bits, sparsity, depth) as the store keeps it.
ATTRS = {
    "units": ["m.l.0.q:bits", "m.l.0.q:sparsity", "m.l.0.k:bits", "m.l.0.k:sparsity", "m.l.0"]
    + ["m.l.1.q:bits", "m.l.1.q:sparsity", "m.l.1.k:bits", "m.l.1.k:sparsity", "m.l.1"],
    "kinds": ["bits", "sparsity", "bits", "sparsity", "depth"] * 2,
    "targets": ["m.l.0.q", "m.l.0.q", "m.l.0.k", "m.l.0.k", "m.l.0"]
    + ["m.l.1.q", "m.l.1.q", "m.l.1.k", "m.l.1.k", "m.l.1"],
    "experiment": {
        "model": "tiny-llama",
        "compress": {"operator": "gptq", "levels": [2, 4, 16], "group_size": 32},
        "sparsity": {"operator": "wanda", "levels": [0, 50], "pattern": "unstructured"},
        "space": {"kind": "joint", "mean_bits": 6.0, "mean_sparsity": 25.0, "dropped": 1},
    },
    "summary": {
        "run": "tiny",
        "candidates": {
            "search": {
                "strategy": "evopress",
                "levels": [4, 50, 16, 0, 1, 2, 0, 16, 50, 0],
                "kl": 0.5,
                "mean_bits": 5.5,
                "mean_sparsity": 25.0,
                "dropped": 1.0,
                "heldout": {"ppl": 12.5, "kl": 0.25},
            }
        },
    },
}
ATTRS["experiment"]["compress"]["symmetric"] = False

#: What presso wrote for ATTRS before plans were typed (the file format is kept to the byte).
GOLDEN = (
    '{"presso_plan": 1, "run": "tiny", "candidate": "search", "strategy": "evopress", '
    '"model": "tiny-llama", "budget": {"mean_bits": 6.0, "mean_sparsity": 25.0, "dropped": 1}, '
    '"mean_bits": 5.5, "mean_sparsity": 25.0, "dropped": ["m.l.1"], '
    '"metrics": {"ppl": 12.5, "kl": 0.25}, "units": {"m.l.0.q": {"method": "gptq", "bits": 4, '
    '"group_size": 32, "symmetric": false, "sparsity": 50, "sparsity_method": "wanda", '
    '"pattern": "unstructured"}, "m.l.0.k": {"method": "dense"}, "m.l.1.q": {"method": "gptq", '
    '"bits": 2, "group_size": 32, "symmetric": false}, "m.l.1.k": {"method": "dense", '
    '"sparsity": 50, "sparsity_method": "wanda", "pattern": "unstructured"}}}'
)


def test_a_runs_plan_file_is_unchanged_and_reads_back() -> None:
    plan = build_plan(ATTRS, "search")
    assert json.dumps(plan.to_dict()) == GOLDEN
    again = Plan.from_dict(json.loads(GOLDEN))
    assert again.to_dict() == plan.to_dict()
    assert again.digest() == plan.digest()


def test_levels_settings_and_kinds() -> None:
    plan = Plan.from_dict(json.loads(GOLDEN))
    assert plan.level("m.l.0.q", "bits") == 4 and plan.level("m.l.0.q", "sparsity") == 50
    assert plan.level("m.l.0.k", "bits") == 16 and plan.level("m.l.0.k", "sparsity") == 0
    assert plan.level("not.a.unit", "bits") == 16  # a unit the plan leaves alone is dense
    assert plan.setting("bits", "method") == "gptq" and plan.group_size == 32
    assert plan.setting("sparsity", "pattern") == "unstructured"
    assert plan.compressed("bits") == {"m.l.0.q": 4, "m.l.1.q": 2}
    assert plan.kinds() == ["bits", "sparsity", "depth"] and plan.dropped == ("m.l.1",)
    assert plan.about["metrics"] == {"ppl": 12.5, "kl": 0.25}


def test_a_search_space_decodes_a_config_to_its_plan() -> None:
    units = [("b.0.q", (8, 8)), ("b.0.k", (8, 8))]
    dims = [
        *bits_dims(units, [2, 4, 16], suffix=":bits"),
        *sparsity_dims(units, [0, 50], suffix=":sparsity"),
        *depth_dims([("b.0", 128)]),
    ]
    settings = {"bits": {"method": "rtn", "group_size": 8, "symmetric": True}}
    space = SearchSpace(dims, settings=settings)
    plan = space.plan((0, 2, 0, 1, 1))
    assert plan.units == {
        "b.0.q": {"bits": 2, "sparsity": 50},
        "b.0.k": {"bits": 16, "sparsity": 0},
    }
    assert plan.dropped == () and plan.group_size == 8
    assert space.plan((2, 2, 1, 1, 0)).dropped == ("b.0",)
    assert plan.entries()["b.0.q"] == {
        "method": "rtn",
        "bits": 2,
        "group_size": 8,
        "symmetric": True,
        "sparsity": 50,
    }
    with pytest.raises(ValueError, match="level index"):
        space.plan((9, 0, 0, 0, 0))


def test_the_digest_is_the_one_cached_builds_and_timings_are_stored_under() -> None:
    # The values the profile database and the ONNX Runtime graph cache hold from before.
    assert levels_plan().digest() == "caf758b34ed818c2"
    plan = levels_plan({"a": (4, 0), "b": (16, 50)}, ("m.l.1",), 32)
    assert plan.digest(12) == "fb10054baa37"
    assert levels_plan({"a": (4, 0)}, group_size=64).digest() != levels_plan({"a": (4, 0)}).digest()


def test_a_unit_may_have_its_own_settings_but_one_group_size_runs() -> None:
    q = {"method": "gptq", "bits": 4, "group_size": 128, "symmetric": True}
    units = {"a": q, "b": {**q, "bits": 8, "group_size": None}, "c": {"method": "dense"}}
    plan = Plan.from_dict({"presso_plan": 1, "units": units, "dropped": []})
    assert plan.entries() == units  # kept per unit, as a plan file may give them
    assert plan.setting("bits", "group_size", unit="b") is None
    with pytest.raises(PressoError, match=r"mixes group sizes \[128, None\]; one is supported"):
        _ = plan.group_size


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "not a presso plan"),
        ({"units": {}}, "not a presso plan"),
        ({"presso_plan": 2, "units": {}}, "plan format version 2; this presso reads version 1"),
        ({"presso_plan": 1, "units": []}, "units: a mapping of unit name"),
        ({"presso_plan": 1, "units": {"a": 4}}, "units: a mapping of unit name"),
        ({"presso_plan": 1, "units": {}, "dropped": "m.l.1"}, "dropped: a list of module names"),
        ({"presso_plan": 1, "units": {"a": {"bits": "4"}}}, r"units\.a\.bits: a whole number"),
        ({"presso_plan": 1, "units": {"a": {"bits": True}}}, r"units\.a\.bits: a whole number"),
    ],
)
def test_a_malformed_plan_file_names_what_is_wrong(data: object, message: str) -> None:
    with pytest.raises(PressoError, match=f"plan.json: {message}"):
        Plan.from_dict(data, where="plan.json")
