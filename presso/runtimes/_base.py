"""The one interface every runtime implements, and what they share: how a unit's weight is
made from the plan and the levels, and a runtime over a torch ``nn.Module``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from presso.errors import PressoError
from presso.registry import Registry
from presso.spaces._bits import DENSE_BITS, BitsKind
from presso.spaces._sparsity import SparsityKind
from presso.spaces._structured import StructuredKind

if TYPE_CHECKING:
    import torch

    from presso.compress import QuantizedWeight, StructuredWeight
    from presso.models import ModelHandle
    from presso.plan import Plan
    from presso.structures import Structure


@runtime_checkable
class Runtime(Protocol):
    """A candidate built on one backend.

    forward: token ids ``[batch, seq]`` -> logits ``[batch, seq, vocab]`` (an encoder's last
        hidden states), one full forward without a KV cache.
    start: prefill ``ids`` into a fresh KV cache; the last position's logits ``[batch, vocab]``.
    step: ``ids [batch, 1]``, the next token of each sequence, against the cache; its logits.
    crop: keep the first ``length`` tokens of the cache (a timed decode step is undone so).
    """

    backend: str
    kind: str
    detail: dict[str, Any]

    def forward(self, ids: torch.Tensor) -> torch.Tensor: ...

    def start(self, ids: torch.Tensor) -> torch.Tensor: ...

    def step(self, ids: torch.Tensor) -> torch.Tensor: ...

    def crop(self, length: int) -> None: ...


@dataclass(frozen=True)
class Levels:
    """Where a unit's compressed weight comes from (a run's stored levels, e.g. GPTQ).

    quantized: ``(unit, bits) -> QuantizedWeight``. sparse: ``(unit, percent) -> the pruned
    fp32 weight``. Either None: made here from the dense weight (RTN at the plan's group size;
    magnitude pruning) — right for latency, not the weights a search scored. structured: see
    the field.
    """

    quantized: Callable[[str, int], QuantizedWeight] | None = None
    sparse: Callable[[str, int], torch.Tensor] | None = None
    #: ``(consumer unit, percent kept) -> StructuredWeight`` (the ZipLM levels); None: the
    #: structures with the largest weights kept, not updated (right for latency only).
    structured: Callable[[str, int], StructuredWeight] | None = None

    @classmethod
    def of(cls, levels: Any) -> Levels:
        """``levels`` as a Levels: None, a Levels, or a ``(unit, bits)`` weight source."""
        if levels is None:
            return cls()
        if isinstance(levels, Levels):
            return levels
        if callable(levels):
            return cls(quantized=levels)
        raise TypeError(f"levels: a Levels, a (unit, bits) callable or None, not {levels!r}")


def unit_levels(plan: Plan, unit: str) -> tuple[int, int]:
    """``unit``'s ``(bits, sparsity)`` in ``plan``: the level a backend's kernels run it at."""
    return plan.level(unit, BitsKind.name), plan.level(unit, SparsityKind.name)


def check_level(where: str, bits: int, sparsity: int) -> None:
    """Refuse a level no runtime can run."""
    if not (2 <= bits <= 8 or bits >= DENSE_BITS) or not 0 <= sparsity <= 99:
        raise PressoError(
            f"{where}: level w{bits}-s{sparsity} cannot be run: bits must be 2..8 "
            f"(or {DENSE_BITS} for dense) and sparsity a percent in 0..99"
        )


def quantized_level(
    weight: torch.Tensor, bits: int, sparsity: int, group_size: int | None
) -> QuantizedWeight:
    """``weight`` pruned by magnitude to ``sparsity`` percent, then RTN-quantized to ``bits``.

    Pruned weights keep code ``zero`` (which the asymmetric grid always has), so they stay
    exactly 0 after dequantization.
    """
    import torch

    from presso.compress import QuantSpec, magnitude_prune, quantize_rtn

    try:
        spec = QuantSpec(bits=bits, group_size=group_size)
        pruned = magnitude_prune(weight, sparsity).weight if sparsity else weight
        qw = quantize_rtn(pruned, spec)
    except ValueError as err:
        raise PressoError(f"level w{bits}-s{sparsity}: {err}") from None
    if sparsity:
        width = qw.shape[1] // qw.scales.shape[1]
        zero_codes = qw.zeros.repeat_interleave(width, dim=1).to(torch.uint8)
        qw.codes = torch.where(pruned == 0, zero_codes, qw.codes)
    return qw


def structured_weights(
    handle: ModelHandle, plan: Plan, levels: Levels
) -> list[tuple[Structure, StructuredWeight]]:
    """The structures ``plan`` prunes (a level under 100 % on their consumer unit), each with
    its consumer's kept, updated weight: what a runtime slices its Linears by."""
    from presso.structures import consumers

    pruned = plan.compressed(StructuredKind.name)
    if not pruned:
        return []
    out = []
    for unit, structure in consumers(handle).items():
        if unit in pruned:
            percent = int(pruned[unit])
            if levels.structured is not None:
                kept = levels.structured(unit, percent)
            else:
                kept = largest_structures(handle.dense_weight(unit), structure, percent)
            out.append((structure, kept))
    return out


def pruned_quantized(
    handle: ModelHandle, plan: Plan, structure: Structure, kept: StructuredWeight, levels: Levels
) -> dict[str, QuantizedWeight]:
    """The members of pruned ``structure`` that ``plan`` also gives bits, each quantized at its
    smaller shape, as the evaluator rounds them: a producer's kept rows of its quantized level
    (a grid's rows are independent, so they are the level's own), the consumer's kept, updated
    columns rounded with RTN on the plan's grid (see
    :meth:`presso.compress.StructuredWeight.quantized`)."""
    from presso.compress import QuantizedWeight, quantize_rtn, structure_columns

    out: dict[str, QuantizedWeight] = {}
    kv_rows = structure_columns(kept.kept, structure.kv_rows)
    for names, rows in ((structure.producers, kept.kept_columns()), (structure.kv, kv_rows)):
        for name in names:
            if unit_levels(plan, name)[0] < DENSE_BITS:
                q = unit_weight(handle, plan, name, levels)
                assert isinstance(q, QuantizedWeight)
                out[name] = q.rows(rows)
    spec = _spec(plan, structure.consumer)
    if spec is not None:
        try:
            out[structure.consumer] = quantize_rtn(kept.weight, spec)
        except ValueError as err:
            raise PressoError(f"unit {structure.consumer}: {err}") from None
    return out


def rounded_structures(
    plan: Plan, structures: list[tuple[Structure, StructuredWeight]]
) -> list[tuple[Structure, StructuredWeight]]:
    """``structures`` with each consumer that ``plan`` also gives bits rounded to them (its
    kept columns, RTN on the plan's grid, dequantized): the float weights a dense-shaped
    or float export runs, equal to what the evaluator scored."""
    return [(structure, _rounded(plan, structure.consumer, kept)) for structure, kept in structures]


def _spec(plan: Plan, unit: str) -> Any:
    """The grid ``plan`` rounds ``unit`` to (a QuantSpec), None when it keeps it dense."""
    from presso.compress import QuantSpec

    bits = unit_levels(plan, unit)[0]
    if bits >= DENSE_BITS:
        return None
    symmetric = plan.setting(BitsKind.name, "symmetric", False, unit=unit)
    return QuantSpec(bits=int(bits), group_size=plan.group_size, symmetric=symmetric)


def _rounded(plan: Plan, unit: str, kept: StructuredWeight) -> StructuredWeight:
    """Consumer ``unit``'s kept columns rounded to its bits in ``plan`` (unchanged if none)."""
    spec = _spec(plan, unit)
    if spec is None:
        return kept
    try:
        return kept.quantized(spec)
    except ValueError as err:
        raise PressoError(f"unit {unit}: {err}") from None


def largest_structures(
    weight: torch.Tensor, structure: Structure, percent: int
) -> StructuredWeight:
    """The structures of ``weight`` (a consumer's) with the largest norms at ``percent`` kept, not
    updated: the shapes a level runs at, without calibration data."""
    import torch

    from presso.compress import StructuredWeight, structure_columns

    g = structure.group_size
    norms = weight.detach().float().pow(2).reshape(weight.shape[0], -1, g).sum(dim=(0, 2))
    kept = torch.sort(torch.argsort(norms, descending=True)[: structure.kept(percent)]).values
    columns = structure_columns(kept, g)
    return StructuredWeight(weight[:, columns].float().contiguous(), kept, g, weight.shape[1])


def unit_weight(
    handle: ModelHandle, plan: Plan, unit: str, levels: Levels
) -> QuantizedWeight | torch.Tensor | None:
    """What ``unit`` runs with in a model of the dense shapes: a QuantizedWeight (2..8 bits),
    its pruned fp32 weight (dense bits, sparse; pruned structures: masked and updated), or
    None (dense: the handle's dense weight). The one place every runtime takes a unit's weight
    from, so that they all run the same numbers."""
    from presso.compress import magnitude_prune

    percent = plan.level(unit, StructuredKind.name)
    bits, sparsity = unit_levels(plan, unit)
    if StructuredKind().compressed(percent):
        if levels.structured is not None:
            kept = levels.structured(unit, int(percent))
        else:
            (kept,) = [k for s, k in structured_weights(handle, plan, levels) if s.consumer == unit]
        return _rounded(plan, unit, kept).masked()  # bits too: as the smaller Linear's
    if bits < DENSE_BITS:
        try:
            if levels.quantized is not None:
                return levels.quantized(unit, bits)
            return quantized_level(handle.dense_weight(unit), bits, sparsity, plan.group_size)
        except PressoError as err:
            raise PressoError(f"unit {unit}: {err}") from None
    if sparsity:
        if levels.sparse is not None:
            return levels.sparse(unit, sparsity)
        return magnitude_prune(handle.dense_weight(unit), sparsity).weight
    return None


def check_plan(handle: ModelHandle, plan: Plan, backend: str | None = None) -> None:
    """Refuse a plan that names units the model lacks or levels no runtime runs (``backend``:
    or that this backend does not run)."""
    units = set(handle.unit_names)
    for name in plan.units:
        if name not in units:
            raise PressoError(f"plan: {name!r} is not a unit of model {handle.name}")
        check_level(f"unit {name}", *unit_levels(plan, name))
    pruned = plan.compressed(StructuredKind.name)
    if not pruned:
        return
    from presso.structures import consumers

    structures = consumers(handle)
    for unit, percent in pruned.items():
        if unit not in structures:
            raise PressoError(
                f"plan: unit {unit} has a structured level ({percent}%), but only attention "
                "output and FFN down projections have one"
            )
        s = structures[unit]
        for member in (s.consumer, *s.producers, *s.kv):
            bits, sparsity = unit_levels(plan, member)
            if sparsity:
                raise PressoError(
                    f"unit {member}: its {s.what} are pruned to {percent}% and it also has "
                    "unstructured sparsity; runtimes build pruned heads and channels dense or "
                    "quantized, not sparse, so give it 0% sparsity"
                )
            if bits < DENSE_BITS and backend and not RUNTIMES.get(backend).pruned_bits:
                raise PressoError(
                    f"unit {member}: its {s.what} are pruned and it has bits; the {backend} "
                    "runtime runs pruned heads and channels at dense bits only, so run this "
                    "plan on torch or onnxruntime"
                )
        bits = unit_levels(plan, s.consumer)[0]
        width = s.kept(percent) * s.group_size
        group = plan.group_size
        if bits < DENSE_BITS and group is not None and width % group:
            raise PressoError(
                f"unit {unit}: {s.describe(percent)} {s.what} kept leave {width} input columns, "
                f"which groups of {group} do not divide, so its {bits}-bit grid cannot be "
                "built; use structured levels whose widths are multiples of the group size "
                "(or compress.group_size: null)"
            )


class ModuleRuntime:
    """A runtime over a torch ``nn.Module`` (a transformers model with some layers replaced):
    the torch, reference, TVM and Triton runtimes.

    model: the built copy. device: where its inputs go. detail: what ran (kernels per unit,
    dropped modules), reported with a timing.
    """

    def __init__(
        self, backend: str, model: Any, kind: str, *, device: str = "cpu", **detail: Any
    ) -> None:
        from presso.models import cache_kwargs

        self.backend = backend
        self.model = model
        self.kind = kind
        self.device = device
        self.detail: dict[str, Any] = detail
        self._keyword = next(iter(cache_kwargs(model, None))) if kind == "causal-lm" else ""
        self._cache: Any = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = ids.to(self.device)
        with torch.inference_mode():
            if self.kind == "causal-lm":
                return self.model(input_ids=ids, use_cache=False).logits
            mask = torch.ones_like(ids)
            return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        self._need_cache()
        self._cache = DynamicCache()
        return self.step(ids)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        import torch

        self._need_cache()
        if self._cache is None:
            raise PressoError("step() before start(): prefill a prompt first")
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(self.device), use_cache=True, **{self._keyword: self._cache}
            )
        return out.logits[:, -1]

    def crop(self, length: int) -> None:
        # transformers 5 crops by a negative count of tokens to remove.
        extra = self._cache.get_seq_length() - length
        if extra > 0:
            self._cache.crop(-extra)

    def _need_cache(self) -> None:
        if self.kind != "causal-lm":
            raise PressoError(
                f"a {self.kind} has no decode phase (no KV cache): use forward() / prefill"
            )


def greedy(runtime: Runtime, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding of one sequence on ``runtime`` with its KV cache: the new tokens."""
    import torch

    logits = runtime.start(ids)
    tokens = [int(logits[0].argmax())]
    for _ in range(max_new_tokens - 1):
        logits = runtime.step(torch.tensor([[tokens[-1]]]))
        tokens.append(int(logits[0].argmax()))
    return tokens


@dataclass(frozen=True)
class _Entry:
    name: str
    module: str
    requires: tuple[str, ...] = ()
    extra: str = ""
    #: Whether it quantizes the smaller Linears of pruned heads and channels (the others
    #: run pruned structures masked in the dense shapes, at dense bits).
    pruned_bits: bool = False


#: Runtimes by backend name: the module that builds each (imported when it builds).
RUNTIMES: Registry[_Entry] = Registry("backend", error=PressoError)
for _entry in (
    _Entry("reference", "presso.runtimes._reference", ("torch",), pruned_bits=True),
    _Entry("torch", "presso.runtimes._torch", ("torch",), pruned_bits=True),
    _Entry("onnxruntime", "presso.runtimes._onnxruntime", ("onnxruntime", "onnx"), "onnx", True),
    _Entry("tvm", "presso.runtimes._tvm", ("tvm",), "tvm"),
    _Entry("triton", "presso.runtimes._triton", ("triton", "torch"), "triton"),
):
    RUNTIMES.register(_entry)


def available() -> list[str]:
    return RUNTIMES.available()


def runtime_module(backend: str) -> Any:
    """The module that builds ``backend``'s runtime (its ``build``); a missing
    optional package is a MissingExtraError naming the extra."""
    import importlib.util

    from presso.errors import MissingExtraError

    entry = RUNTIMES.get(backend)
    for package in entry.requires:
        if importlib.util.find_spec(package) is None:
            raise MissingExtraError(package, entry.extra, f"the {backend} runtime")
    return importlib.import_module(entry.module)


def build(
    backend: str, handle: ModelHandle, plan: Plan, levels: Any = None, **options: Any
) -> Runtime:
    """``plan`` built on ``backend`` for ``handle``'s model, weights from ``levels`` (see
    :class:`Levels`); ``options`` are the backend's (device, packed dtype, kernels…).
    ``handle.model`` is not modified."""
    module = runtime_module(backend)
    _ = plan.group_size  # refuses a plan whose units mix group sizes
    check_plan(handle, plan, backend)
    return module.build(handle, plan, Levels.of(levels), **options)
