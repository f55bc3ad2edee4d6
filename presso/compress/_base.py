"""The operator interface: one compression method, realising any level of any Linear weight,
and the registry that maps operator names (as written in experiment files) to classes."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from presso.compress._quant import QuantizedWeight, QuantSpec
from presso.registry import Registry


class Compressed(Protocol):
    """What an operator produces: a compressed weight that the level database can store.

    QuantizedWeight (codes, scales, zeros) and sparse weights both satisfy it.
    """

    def dequantize(self) -> torch.Tensor:
        """The float32 ``[out, in]`` weight to run the model with."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name."""
        ...

    def meta(self) -> dict[str, Any]:
        """JSON-ready facts that, with :meth:`tensors`, let :meth:`Operator.restore` rebuild it."""
        ...


class Operator(ABC):
    """A compression method: ``compress(weight, level, hessian)`` realises one ``level``.

    What a level means is the class attribute ``kind``: ``"bits"`` per weight for quantizers
    (:class:`Quantizer`), ``"sparsity"`` in integer percent of zeroed weights for pruners. The level
    database and the evaluator read it; search spaces use the same kind names.

    Subclasses set ``name`` (the registry key), ``needs_hessian`` (whether ``compress`` needs the
    calibration Hessian, so callers collect one only when needed), ``kind`` (unless ``"bits"``),
    implement :meth:`compress` and :meth:`restore`, and extend :meth:`key` with every constructor
    option that changes the output.
    """

    name: ClassVar[str]
    needs_hessian: ClassVar[bool]
    # The unit of `level`: a knob kind's name (presso.spaces.KINDS). "bits" by default:
    # operators were quantizers first.
    kind: ClassVar[str] = "bits"
    # Bumped when an implementation change alters outputs, so cached levels are rebuilt.
    version: ClassVar[int] = 2

    def key(self) -> dict[str, Any]:
        """Every parameter that changes the output, as JSON-ready data (content addressing)."""
        return {"name": self.name, "version": self.version}

    @abstractmethod
    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> Compressed:
        """Compress ``weight`` ``[out, in]`` to ``level``; ``hessian`` ``[in, in]`` or None."""

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Compressed:
        """Rebuild what :meth:`compress` returned from its stored tensors and meta."""
        raise NotImplementedError(f"{type(self).__qualname__} cannot restore stored levels")

    def compress_many(
        self, weight: torch.Tensor, levels: Sequence[int], hessian: torch.Tensor | None
    ) -> list[Compressed]:
        """:meth:`compress` at each of ``levels``; operators override it when sharing work pays."""
        return [self.compress(weight, level, hessian) for level in levels]

    def units(self, handle: Any) -> list[str]:
        """The units of ``handle`` this operator compresses (default: every unit)."""
        return handle.unit_names

    def for_unit(self, handle: Any, unit: str) -> Operator:
        """The operator that compresses ``unit`` of ``handle``: itself, unless what a level
        means depends on the unit (structured pruning: which columns form one head)."""
        return self

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.key().items() if k not in ("name",))
        return f"{type(self).__name__}({options})"


class Quantizer(Operator):
    """A weight quantizer: ``level`` = bits per weight (2..8), on per-group integer grids of
    ``group_size`` input columns (``None``: one grid per output row), ``symmetric`` or not."""

    kind = "bits"

    def __init__(self, *, group_size: int | None = None, symmetric: bool = False) -> None:
        QuantSpec(bits=2, group_size=group_size, symmetric=symmetric)  # validates the options
        self.group_size = group_size
        self.symmetric = symmetric

    def spec(self, level: int) -> QuantSpec:
        """The quantization spec of ``level`` (bits, 2..8)."""
        return QuantSpec(bits=level, group_size=self.group_size, symmetric=self.symmetric)

    def key(self) -> dict[str, Any]:
        return {**super().key(), "group_size": self.group_size, "symmetric": self.symmetric}

    @abstractmethod
    def compress(
        self, weight: torch.Tensor, level: int, hessian: torch.Tensor | None
    ) -> QuantizedWeight:
        """Quantize ``weight`` ``[out, in]`` to ``level`` bits; ``hessian`` ``[in, in]`` or None."""

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> QuantizedWeight:
        return QuantizedWeight.from_tensors(tensors, QuantSpec(**meta))


def _available_by_kind() -> str:
    """``"gptq, rtn (bits); magnitude, ... (sparsity)"``: the names, grouped by level kind."""
    groups: dict[str, list[str]] = {}
    for name in OPERATORS.available():
        groups.setdefault(OPERATORS.get(name).kind, []).append(name)
    return "; ".join(f"{', '.join(names)} ({kind})" for kind, names in groups.items())


#: Compression operators by the name experiment files give them (``compress.operator``).
OPERATORS: Registry[type[Operator]] = Registry("compression operator", choices=_available_by_kind)
_O = TypeVar("_O", bound=type[Operator])


def register(cls: _O) -> _O:
    """Class decorator: make ``cls`` available to :func:`make_operator` under ``cls.name``."""
    return OPERATORS.register(cls)


def available_operators() -> list[str]:
    """Registered operator names, sorted."""
    return OPERATORS.available()


def make_operator(name: str, **options: Any) -> Operator:
    """The operator registered as ``name``, built with keyword ``options``."""
    cls = OPERATORS.get(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as err:
        accepted = ", ".join(inspect.signature(cls).parameters)
        raise ValueError(f"operator {name!r}: {err}; it accepts: {accepted}") from None
    return cls(**options)
