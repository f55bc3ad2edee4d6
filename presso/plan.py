"""The plan: what a candidate does to a model — each unit's level of each knob kind, and the
modules (blocks or sublayers) dropped. The one form a candidate takes between the search
space, the evaluator, the profilers, export and generate.

Its dictionary form is presso's plan file (``presso_plan: 1``)::

    {"presso_plan": 1, "run": ..., "candidate": ..., "strategy": ..., "model": ...,
     "budget": {...}, "mean_bits": ..., "metrics": {...},
     "units": {"model.layers.0.mlp.up_proj": {"method": "gptq", "bits": 4, "group_size": 128,
                                               "symmetric": false}, ...},
     "dropped": ["model.layers.5"]}

A unit entry has ``method: dense`` unless a kind compresses it; each kind that does adds its
level under its name and its settings (how its levels were built).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from presso.errors import PressoError

#: The plan file's format version (the value of its ``presso_plan`` key).
PLAN_VERSION = 1
#: What a plan says about where it came from, in the order a plan file writes it (the budget
#: metrics of the candidate follow ``budget``).
_HEAD = ("run", "candidate", "strategy", "model", "budget")
#: The per-unit kinds every plan digest holds (those there were when digests were first stored).
_DIGEST_KINDS = ("bits", "sparsity")


def _kinds() -> Any:
    # The knob kinds are plug-ins of presso.spaces; a plan only reads their names, dense levels
    # and settings fields, so it looks them up when used.
    from presso.spaces._kinds import KINDS

    return KINDS


@dataclass(frozen=True)
class Plan:
    """A candidate as a model sees it.

    units: per unit the plan names, its level of each kind that sets it (a kind not named
        leaves the unit at that kind's dense level).
    dropped: the modules (blocks, or a block's ``self_attn`` / ``mlp``) removed.
    settings: per kind, the entry fields of a unit it compresses besides the level
        (``{"bits": {"method": "gptq", "group_size": 128, "symmetric": False}}``).
    overrides: per unit and kind, the entry fields that differ from ``settings`` (a plan file
        may give a unit its own group size; a run's plans have none).
    about: where the plan came from (run, candidate, strategy, model, budget, the candidate's
        budget metrics, held-out ``metrics``); empty for a plan decoded from a search space.
    """

    units: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    about: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading

    def level(self, unit: str, kind: str) -> int:
        """``unit``'s level of ``kind`` (its dense level when the plan leaves it alone)."""
        value = self.units.get(unit, {}).get(kind)
        return _kinds().get(kind).dense if value is None else value

    def setting(self, kind: str, name: str, default: Any = None, *, unit: str | None = None) -> Any:
        """How ``kind``'s levels were built (for ``unit``, if given):
        ``setting("bits", "group_size")``."""
        fields = self.overrides.get(unit, {}).get(kind) if unit is not None else None
        if fields is None:
            fields = self.settings.get(kind, {})
        return fields.get(name, default)

    @property
    def group_size(self) -> int | None:
        """Input columns per quantization group of the quantized units (None: per channel);
        a PressoError for a plan whose units have different ones."""
        from presso.spaces._bits import GROUP_SIZE, BitsKind

        name = BitsKind.name
        groups = {
            self.setting(name, "group_size", GROUP_SIZE, unit=u) for u in self.compressed(name)
        }
        if len(groups) > 1:
            raise PressoError(
                f"the plan mixes group sizes {sorted(groups, key=str)}; one is supported"
            )
        return groups.pop() if groups else self.setting(name, "group_size", GROUP_SIZE)

    def compressed(self, kind: str) -> dict[str, int]:
        """The units ``kind`` compresses, with their level."""
        k = _kinds().get(kind)
        return {
            unit: levels[kind]
            for unit, levels in self.units.items()
            if kind in levels and k.compressed(levels[kind])
        }

    def kinds(self) -> list[str]:
        """The kinds this plan uses (compresses a unit with, or drops a module by)."""
        used = []
        for k in _kinds().values():
            if (k.per_unit and self.compressed(k.name)) or (
                not k.per_unit and k.dropped(self.dropped)
            ):
                used.append(k.name)
        return used

    def entries(self) -> dict[str, dict[str, Any]]:
        """Each unit's entry as the plan file writes it (``{"method": "gptq", "bits": 4, ...}``;
        ``{"method": "dense"}`` for a unit no kind compresses)."""
        registry = _kinds()
        out: dict[str, dict[str, Any]] = {}
        for unit, levels in self.units.items():
            entry: dict[str, Any] = {"method": "dense"}
            for kind in registry.values():
                level = levels.get(kind.name)
                if kind.per_unit and level is not None and kind.compressed(level):
                    entry[kind.name] = int(level)
                    own = self.overrides.get(unit, {}).get(kind.name)
                    entry.update(own if own is not None else self.settings.get(kind.name, {}))
            out[unit] = entry
        return out

    def digest(self, length: int = 16) -> str:
        """A content hash of what the plan does to a model (levels, dropped modules, group
        size): the key of cached builds and timings of this candidate."""
        from presso.paths import digest

        # The kinds the first digests held always count; a later kind only when the plan uses
        # it, so that the digests of plans without it (cached timings, graphs) stay as they were.
        used = self.kinds()
        kinds = [
            k.name
            for k in _kinds().values()
            if k.per_unit and (k.name in _DIGEST_KINDS or k.name in used)
        ]
        units = sorted((u, tuple(self.level(u, k) for k in kinds)) for u in self.units)
        return digest([units, self.dropped, self.group_size], length)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_levels(
        cls,
        targets: Sequence[str],
        kinds: Sequence[str],
        values: Sequence[float],
        *,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        about: Mapping[str, Any] | None = None,
    ) -> Plan:
        """The plan of one level value per search dimension (its target module and kind), as a
        search space or a stored run lists them."""
        registry = _kinds()
        units: dict[str, dict[str, int]] = {}
        dropped = []
        for target, kind, value in zip(targets, kinds, values, strict=True):
            k = registry.get(kind)
            if k.per_unit:
                units.setdefault(target, {})[kind] = int(value)
            elif k.compressed(value):
                dropped.append(target)
        return cls(units, tuple(dropped), dict(settings or {}), dict(about or {}))

    @classmethod
    def uniform(
        cls,
        units: Sequence[str],
        levels: Mapping[str, int],
        *,
        dropped: Sequence[str] = (),
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Plan:
        """Every unit of ``units`` at ``levels`` (kind -> level)."""
        return cls({u: dict(levels) for u in units}, tuple(dropped), dict(settings or {}))

    # ------------------------------------------------------------------ the plan file

    def to_dict(self) -> dict[str, Any]:
        """The plan file's contents (format ``presso_plan`` version 1)."""
        about = dict(self.about)
        head = {key: about.pop(key, None) for key in _HEAD}
        metrics = about.pop("metrics", {})
        return {
            "presso_plan": PLAN_VERSION,
            **head,
            **about,
            "metrics": metrics,
            "units": self.entries(),
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "plan") -> Plan:
        """A plan from its file's contents; a malformed one is a PressoError naming ``where``
        and what is wrong."""
        if not isinstance(data, dict) or "presso_plan" not in data:
            raise PressoError(f"{where}: not a presso plan (no presso_plan key)")
        if data["presso_plan"] != PLAN_VERSION:
            raise PressoError(
                f"{where}: plan format version {data['presso_plan']!r}; this presso reads "
                f"version {PLAN_VERSION}"
            )
        units, dropped = data.get("units"), data.get("dropped", [])
        if not isinstance(units, dict) or not all(isinstance(e, dict) for e in units.values()):
            raise PressoError(f"{where}: units: a mapping of unit name to its entry expected")
        if not isinstance(dropped, list) or not all(isinstance(d, str) for d in dropped):
            raise PressoError(f"{where}: dropped: a list of module names expected")
        registry = _kinds()
        levels: dict[str, dict[str, int]] = {}
        settings: dict[str, dict[str, Any]] = {}
        overrides: dict[str, dict[str, dict[str, Any]]] = {}
        for unit, entry in units.items():
            levels[unit] = {}
            for kind in registry.values():
                if not kind.per_unit or kind.name not in entry:
                    continue
                value = entry[kind.name]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise PressoError(
                        f"{where}: units.{unit}.{kind.name}: a whole number expected, got {value!r}"
                    )
                levels[unit][kind.name] = value
                fields = {f: entry[f] for f in kind.settings if f in entry}
                if settings.setdefault(kind.name, fields) != fields:
                    overrides.setdefault(unit, {})[kind.name] = fields
        about = {
            k: v
            for k, v in data.items()
            if k not in ("presso_plan", "units", "dropped") and not (k in _HEAD and v is None)
        }
        return cls(levels, tuple(dropped), settings, about, overrides)


def run_dimensions(study_attrs: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """A stored run's search dimensions: their names, kinds and target modules (runs stored
    before spaces had several kinds list names only: every dimension is a bits one)."""
    names = list(study_attrs["units"])
    kinds = study_attrs.get("kinds") or ["bits"] * len(names)
    targets = study_attrs.get("targets") or names
    return names, list(kinds), list(targets)
