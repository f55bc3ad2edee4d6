"""The exporter interface: a chosen candidate's plan, written in one target tool's format.

Every format is an :class:`Exporter` registered by name; ``presso export --format NAME``
finds it here. Formats that hold only a configuration (a recipe, a per-module config) read
the plan; formats that hold weights (a Hugging Face folder, an ONNX model) also read the
run's compressed levels through a :class:`Source`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from presso.errors import MissingExtraError, PressoError
from presso.plan import Plan
from presso.registry import Registry
from presso.spaces._bits import BitsKind
from presso.spaces._sparsity import SparsityKind
from presso.summary import RunSummary


class Source:
    """The run behind a plan: its experiment rebuilt (model, data, level databases), lazily.

    Level databases are content-addressed in the cache, so they are found again (or rebuilt,
    identically) on any machine with the same model and calibration data. Nothing is timed:
    a run's ``hardware:`` section priced its candidates during the search, and an export
    writes weights, not prices, so the backend is not profiled again.
    """

    def __init__(self, run: RunSummary | dict[str, Any], phase: str) -> None:
        from presso.export._plan import run_summary

        self.summary = run_summary(run)
        self.phase = phase

    @cached_property
    def setup(self):  # noqa: ANN201 - presso.experiment.Setup
        from presso.config import Experiment
        from presso.experiment import Setup

        experiment = Experiment.model_validate(self.summary.experiment)
        setup = Setup(experiment, measure_latency=False)
        setup.prepare()
        return setup

    @property
    def handle(self):  # noqa: ANN201 - ModelHandle (dense weights in place)
        return self.setup.handle

    def quantized(self, unit: str, bits: int):  # noqa: ANN201 - QuantizedWeight
        """The stored quantized weight of ``unit`` at ``bits`` (codes, scales, zeros)."""
        return self.setup.level_db(BitsKind.name).load(unit, bits)

    def sparse(self, unit: str, sparsity: int):  # noqa: ANN201 - SparseWeight
        """The stored pruned weight of ``unit`` at ``sparsity`` percent."""
        return self.setup.level_db(SparsityKind.name).load(unit, sparsity)

    def structured(self, unit: str, percent: int):  # noqa: ANN201 - StructuredWeight
        """The stored ZipLM level of consumer ``unit`` with ``percent`` of its structures kept."""
        return self.setup.level_db("structured").load(unit, percent)

    def structures(self, plan: Plan) -> list:
        """``(Structure, StructuredWeight)`` of every head set or FFN ``plan`` prunes, with the
        stored (OBS-updated) weights the search scored; a PressoError, as the runtimes give,
        for a pruned structure whose units also have bits or sparsity (an export would
        otherwise write them dense)."""
        from presso.runtimes._base import Levels, check_plan, structured_weights

        if plan.compressed("structured"):  # refuse what no runtime builds: bits on pruned units
            check_plan(self.handle, plan)
        return structured_weights(self.handle, plan, Levels(structured=self.structured))

    def evaluator(self):  # noqa: ANN201 - an Evaluator with this candidate applied
        """presso's own evaluation of the candidate: the model with exactly the weights (and
        dropped blocks) the search scored. Exports are checked against its outputs."""
        from presso.export._plan import build_plan

        evaluator = self.setup.evaluator()
        evaluator.apply_plan(build_plan(self.summary, self.phase))
        return evaluator


class Exporter(ABC):
    """One target format. ``folder`` exporters write a directory, others one file."""

    name: ClassVar[str]
    help: ClassVar[str] = ""
    folder: ClassVar[bool] = False
    #: Packages the writer itself needs (not the target's runtime), and the extra installing them.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    #: The knob kinds the format can hold (None: every kind); a plan using another is refused.
    kinds: ClassVar[tuple[str, ...] | None] = None

    def check(self, plan: Plan) -> None:
        """Refuse, before anything is written, a plan the target cannot represent (say which
        layers and why). The default refuses only kinds the format does not hold."""
        import importlib.util

        from presso.spaces import KINDS

        for package in self.requires:
            if importlib.util.find_spec(package) is None:
                raise MissingExtraError(package, self.extra, f"--format {self.name}")
        for kind in KINDS.values():
            if self.kinds is not None and kind.name not in self.kinds:
                refusal = kind.refusal(plan, self.name)
                if refusal:
                    raise PressoError(refusal)

    def notice(self, plan: Plan) -> str:
        """What a user of the written export must know (printed after it is written): how the
        target runs it differently from what presso scored. The default: nothing."""
        return ""

    @abstractmethod
    def write(self, plan: Plan, out: Path, source: Source) -> None:
        """Write the export to ``out`` atomically (a file via presso.paths.atomic_write_*, a
        folder via presso.export._target.export_dir, which adds the manifest); ``out`` is known
        not to exist, or --force was given and it is a file or a folder presso exported."""


#: Export formats by name, in registration order (the order ``presso export --help`` lists).
FORMATS: Registry[type[Exporter]] = Registry("export format", error=PressoError, ordered=True)


def register(cls: type[Exporter]) -> type[Exporter]:
    return FORMATS.register(cls)


def formats() -> list[str]:
    return FORMATS.available()


def make_exporter(name: str) -> Exporter:
    return FORMATS.make(name)
