"""Knob kinds as plug-ins, and the one registry every plug-in role uses."""

from __future__ import annotations

import typing

import pytest

from presso.compress._base import OPERATORS
from presso.config import OBJECTIVES, Experiment, SpaceConfig
from presso.errors import PressoError
from presso.export import make_exporter
from presso.plan import Plan
from presso.registry import Registry
from presso.spaces import BUDGET_METRICS, KINDS, Kind


def test_the_kinds_in_experiment_file_order() -> None:
    kinds = KINDS.available()
    assert kinds == ["bits", "sparsity", "depth", "steps", *kinds[4:]]
    assert sorted(kinds[4:]) == ["skips", "structured"]
    assert BUDGET_METRICS[:4] == ("mean_bits", "mean_sparsity", "dropped", "steps")
    assert sorted(BUDGET_METRICS[4:6]) == ["blocks", "kept_params"]


def test_each_kind_owns_its_section_budget_and_operators() -> None:
    fields = list(Experiment.model_fields)
    space = list(SpaceConfig.model_fields)
    kind_choices = typing.get_args(SpaceConfig.model_fields["kind"].annotation)
    for kind in KINDS.values():
        assert kind.name in kind_choices and kind.budget in space and kind.budget in OBJECTIVES
        if kind.section:
            assert fields.index("data") < fields.index(kind.section) < fields.index("space")
            assert Experiment.model_fields[kind.section].annotation is kind.config
        assert kind.label and kind.colorscale
    # every compression operator makes levels of a registered kind
    assert {OPERATORS.get(n).kind for n in OPERATORS.available()} <= set(KINDS.available())


def test_a_new_kind_flows_through_plans_and_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind registered beside the built-in ones: plans carry it, and the exporters that do
    not hold it refuse such a plan by name, without knowing of it."""

    class Heads(Kind):
        name = "heads"
        label = "heads kept"
        dense = 0
        budget = "heads_pruned"
        settings = {"heads_method": "operator"}

        def dims(self, setup, block, units, *, suffix):  # noqa: ANN001, ANN201
            raise NotImplementedError

        def constraint(self, limit, dims):  # noqa: ANN001, ANN201
            raise NotImplementedError

    monkeypatch.setattr(KINDS, "_items", {**KINDS._items, "heads": Heads()})
    plan = Plan.from_levels(
        ["m.l.0.q", "m.l.0.q"], ["bits", "heads"], [4, 2], settings={"heads": {"heads_method": "x"}}
    )
    entry = {"method": "dense", "bits": 4, "heads": 2, "heads_method": "x"}
    assert plan.to_dict()["units"] == {"m.l.0.q": entry}
    assert Plan.from_dict(plan.to_dict()).level("m.l.0.q", "heads") == 2
    assert plan.kinds() == ["bits", "heads"]
    with pytest.raises(
        PressoError, match=r"--format gptqmodel cannot hold heads levels.*m\.l\.0\.q"
    ):
        make_exporter("gptqmodel").check(plan)
    make_exporter("plan").check(plan)  # a plan file holds every kind


def test_registry_refuses_duplicates_and_names_the_choices() -> None:
    class Thing:
        name = "one"

    things: Registry[type] = Registry("widget", error=PressoError)
    things.register(Thing)
    with pytest.raises(ValueError, match="a widget named 'one' is already registered"):
        things.register(Thing)
    assert things.make("one").__class__ is Thing and "one" in things and len(things) == 1
    with pytest.raises(PressoError, match="unknown widget 'two'; available: one"):
        things.get("two")
    with pytest.raises(ValueError, match="non-empty class attribute `name`"):
        things.register(object())
