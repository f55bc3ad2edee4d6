"""Knob kinds as plug-ins: what a level means (bits, sparsity, depth...) and everything that
follows from it.

A kind owns its experiment-file section (``compress:`` for bits, ``sparsity:``), its budget
field under ``space:`` and that budget's constraint, its dimensions, the operator that builds
its levels, its entry in a plan, how its level is realised on a model, and its labels. The rest
of presso loops over :data:`KINDS`; a new kind is one module that registers a :class:`Kind`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from presso.registry import Registry

if TYPE_CHECKING:
    import torch

    from presso.spaces._base import Constraint, Dimension


class Kind(ABC):
    """One knob kind.

    name: the kind's name (``Dimension.kind``, ``Operator.kind``, a plan entry's level key).
    label: how views title its levels (``sparsity (%)``).
    dense: the level that leaves a unit (or module) as it is.
    per_unit: whether its levels set a unit's weight (bits, sparsity), or else remove a module
        (depth: a plan lists the modules dropped).
    order: where its level applies when a unit has several (lower first: a unit is pruned,
        then its kept weights rounded).
    section: its experiment-file section (None: it has none); ``config`` that section's model.
    budget: its budget field under ``space:``, the constrained metric (``mean_bits``);
        ``space_fields`` that field and any other the kind adds under ``space:``, as pydantic
        ``(annotation, FieldInfo)``.
    settings: the plan-entry fields a compressed unit records besides its level, each from a
        field of ``section`` (``{"method": "operator"}``).
    timing_key: the key of its level database's build time in a run's timings.
    colorscale: the Plotly colour scale the dashboard draws its per-layer levels with.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    dense: ClassVar[int]
    per_unit: ClassVar[bool] = True
    order: ClassVar[int] = 0
    section: ClassVar[str | None] = None
    config: ClassVar[Any] = None
    budget: ClassVar[str]
    space_fields: ClassVar[dict[str, tuple[Any, Any]]] = {}
    settings: ClassVar[dict[str, str]] = {}
    timing_key: ClassVar[str] = ""
    colorscale: ClassVar[Any] = "Viridis"
    #: The prefix (or prefixes) of the targets a plan drops for a kind that removes
    #: (``timestep.``); None: the modules no other kind's prefix names (depth's blocks and
    #: sublayers).
    prefix: ClassVar[str | tuple[str, ...] | None] = None

    # ------------------------------------------------------------ the search space

    @abstractmethod
    def dims(
        self, setup: Any, block: str, units: list[tuple[str, tuple[int, int]]], *, suffix: str
    ) -> list[Dimension]:
        """The dimensions of one block of ``setup``'s model (presso.experiment.Setup):
        ``units``, its ``(name, (out_features, in_features))``; ``suffix`` tells a joint
        space's dimensions of one unit apart (``:bits``)."""

    @abstractmethod
    def constraint(self, limit: float, dims: Sequence[Dimension]) -> Constraint:
        """Its budget ``space.<budget> = limit`` as a constraint over ``dims`` (raises
        PressoError when the model cannot meet it)."""

    def check(self, experiment: Any, fail: Callable[[tuple, str], None], active: bool) -> None:
        """Checks of an experiment file beyond types (``active``: the space has this kind);
        ``fail(loc, message)`` reports one. The default checks nothing."""
        return None

    # ------------------------------------------------------------ levels and plans

    def compressed(self, level: float) -> bool:
        """Whether ``level`` changes the unit (is not its dense level)."""
        return level != self.dense

    def built_levels(self, section: Any) -> list[int]:
        """The levels its operator builds (the dense level needs none)."""
        return list(section.levels)

    def operator_options(self, section: Any) -> dict[str, Any]:
        """The options its operator (``section.operator``) is built with."""
        return {}

    def check_model(self, experiment: Any, handle: Any) -> None:
        """Refuse a model its operator cannot compress (raises PressoError). The default
        accepts every model."""
        return None

    def plan_settings(self, section: dict[str, Any]) -> dict[str, Any]:
        """The plan-entry fields of a compressed unit besides its level, from the section's
        JSON form (a run stores its experiment as JSON)."""
        return {field: section.get(key) for field, key in self.settings.items()}

    def dropped(self, targets: Sequence[str]) -> list[str]:
        """The targets of a plan's dropped list that are this kind's (see :attr:`prefix`)."""
        if self.prefix:
            return [t for t in targets if t.startswith(self.prefix)]
        others = [k.prefix for k in KINDS.values() if k.prefix]
        return [t for t in targets if not any(t.startswith(p) for p in others)]

    def refusal(self, plan: Any, fmt: str) -> str | None:
        """Why export format ``fmt``, which cannot hold this kind, refuses ``plan`` (naming the
        layers), or None when the plan does not use the kind."""
        from presso.errors import layer_list

        used = plan.compressed(self.name) if self.per_unit else self.dropped(plan.dropped)
        if not used:
            return None
        return (
            f"--format {fmt} cannot hold {self.name} levels, and this candidate sets them for "
            f"{layer_list(used)}; export it with --format plan, or choose another candidate"
        )

    def show(
        self,
        targets: Sequence[str],
        values: Sequence[float],
        *,
        model: Callable[[], Any] | None = None,
    ) -> str | None:
        """How ``presso show`` prints the search's best levels of this kind (``targets`` and
        ``values``: its dimensions'; ``model``: loads the run's model, a ModelHandle), or None
        for the per-layer grid."""
        return None

    def realise(
        self, db: Any, unit: str, level: int, weight: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``unit``'s weight at ``level`` given the weight earlier kinds set (None: dense),
        or None to leave it dense."""
        raise NotImplementedError(f"the {self.name} kind sets no weights")


#: The knob kinds, in the order their sections and budgets appear in an experiment file.
KINDS: Registry[Kind] = Registry("kind", ordered=True)


def register(kind: type[Kind]) -> type[Kind]:
    """Class decorator: register an instance of ``kind``."""
    KINDS.register(kind(), kind.name)
    return kind


def kind(name: str) -> Kind:
    """The registered kind ``name``."""
    return KINDS.get(name)


def unit_kinds() -> list[Kind]:
    """The kinds whose levels set a unit's weight, in registration order."""
    return [k for k in KINDS.values() if k.per_unit]


def plan_settings(experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per kind with a section, the plan-entry fields of the units it compresses, from an
    experiment's JSON form."""
    return {
        k.name: k.plan_settings(experiment[k.section])
        for k in KINDS.values()
        if k.section and k.section in experiment
    }


def budgets(space: dict[str, Any]) -> dict[str, Any]:
    """The budgets a ``space:`` section (JSON form) sets, by name (``{"mean_bits": 3.0}``)."""
    return {k.budget: space[k.budget] for k in KINDS.values() if space.get(k.budget) is not None}
