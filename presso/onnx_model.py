"""ONNX models of compressed causal LMs that ONNX Runtime runs with its own low-bit kernels.

:func:`build_onnx` writes a Llama-family model (``LlamaForCausalLM``: tiny-llama, SmolLM2) in
which every quantized unit is a ``com.microsoft.MatMulNBits`` node at its own bits (or, with
``fmt="qdq"``, a blocked ``DequantizeLinear`` feeding a ``MatMul``), holding exactly the codes,
scales and zero points it is given; dropped blocks and sublayers are not in the graph at all.

Why the graph is written node by node rather than by ``torch.onnx.export``: the dynamo exporter
took 25-40 s for the 4-block tiny-llama on a 2-core CPU (minutes for SmolLM2), names the
transposed weights ``val_N`` after optimisation, and gives no KV-cache variant for free. Here the
same graph takes well under a second to emit plus the time to pack the weights, and the KV-cache
variant (``kv_cache=True``: ``past_key.J``/``past_value.J`` in, ``present_key.J``/
``present_value.J`` out, J counting the attention layers kept) is a flag. The rotary tables
are computed by the model's own rotary module (for positions 0 .. max_position_embeddings-1),
so rope variants whose tables depend on the position alone come out right (not "dynamic" NTK
scaling, which depends on the sequence length); tests compare the logits with transformers'.

ORT's layouts (checked against ORT 1.32 on CPU; the kernel refuses others):

* MatMulNBits computes ``A @ W^T`` for ``W`` ``[N, K]`` with ``w = scale * (code - zero)``, as
  presso's grids do. ``bits`` must be 2, 4 or 8; other widths are *carried* at the next one
  (3 -> 4, 5..7 -> 8: the same codes, exactly the same values, more bytes), recorded in the
  model's ``presso.units`` metadata. ``B`` is ``[N, K/block, block*bits/8]`` uint8, codes packed
  little-end first; ``scales`` ``[N * K/block]``; ``zero_points`` packed like ``B`` per row.
  ``block_size`` must be a power of two >= 16: a presso group of another width (or a per-channel
  grid) is written at the largest such block dividing it, its scale and zero repeated.
* ``accuracy_level`` 0 (the default here) computes in fp32 and matches presso's evaluator;
  4 quantizes the activations to int8 (faster on CPU, not exact).
* QDQ: ``DequantizeLinear`` (opset 21, ``axis=0``, ``block_size`` = the group width) of uint4
  (bits <= 4) or uint8 codes ``[K, N]``. ORT fuses it into MatMulNBits at session start, with
  accuracy level 4 unless the session sets ``session.qdq_matmulnbits_accuracy_level`` to 0,
  which :func:`make_session` does (+1.6% perplexity on SmolLM2 without it). The model's
  ``presso.session_config`` metadata holds the session config entries it needs
  (:data:`SESSION_CONFIG`), for sessions made elsewhere.

Pruned units hold the dense values of the pruned weight (ORT has no unstructured-sparse GEMM
on CPU). Weights are stored inside the ``.onnx`` file when it stays under protobuf's 2 GB limit,
otherwise in ``<name>.onnx.data`` beside it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.errors import MissingExtraError, PressoError
from presso.spaces import DENSE_BITS
from presso.spaces._bits import BitsKind
from presso.spaces._sparsity import SparsityKind

if TYPE_CHECKING:
    import onnx
    import torch

    from presso.compress import QuantizedWeight, StructuredWeight
    from presso.models import ModelHandle
    from presso.plan import Plan
    from presso.structures import Structure


def _unit_levels(plan: Plan, unit: str) -> tuple[int, int]:
    """``unit``'s ``(bits, sparsity)`` in ``plan`` (as ``presso.profilers.unit_levels`` reads
    them; the profilers sit above this module, so it reads the plan itself)."""
    return plan.level(unit, BitsKind.name), plan.level(unit, SparsityKind.name)


#: Weight widths ORT 1.32's CPU MatMulNBits kernel accepts.
ORT_BITS = (2, 4, 8)
FORMATS = ("matmulnbits", "qdq")
OPSET = 21
#: protobuf refuses messages of 2 GiB; stay clear of it.
INLINE_LIMIT = 2**31 - 2**26
#: Additive mask value for keys a query must not see (what transformers uses in fp32).
MASKED = float(np.finfo(np.float32).min)

WeightFn = Callable[[str, int], "QuantizedWeight"]
SparseFn = Callable[[str, int], "torch.Tensor"]


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingExtraError("onnx", "onnx", "building an ONNX model") from None
    return onnx


# --------------------------------------------------------------------------- weight layouts


def carrier_bits(bits: int) -> int:
    """The width MatMulNBits runs ``bits``-bit codes at: the narrowest of 2/4/8 holding them."""
    for width in ORT_BITS:
        if bits <= width:
            return width
    raise PressoError(f"MatMulNBits holds at most 8-bit codes, got {bits} bits")


def block_size(group_width: int, where: str = "weight") -> int:
    """The MatMulNBits block for groups of ``group_width`` input columns: the largest power of
    two >= 16 that divides it (ORT needs such a block; a group is then several blocks)."""
    block = group_width & -group_width  # the largest power of two dividing it
    if block < 16:
        raise PressoError(
            f"{where}: groups of {group_width} input columns cannot be MatMulNBits blocks, "
            "which are powers of two >= 16; use a group size that is a multiple of 16"
        )
    return block


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes ``[rows, n]`` into uint8 ``[rows, ceil(n*bits/8)]``, ``8/bits`` codes
    a byte, the first in the lowest bits (ORT's and ONNX's uint4 order). Rows are padded with 0."""
    per_byte = 8 // bits
    rows, n = codes.shape
    padded = np.zeros((rows, -(-n // per_byte) * per_byte), np.uint8)
    padded[:, :n] = codes
    # OR-ing strided uint8 views: 8-19x faster than summing shifted uint16 lanes, which cost
    # most of the graph build of a candidate (210 layers) or of an op's weight copies.
    packed = padded[:, ::per_byte].copy()
    for slot in range(1, per_byte):
        packed |= padded[:, slot::per_byte] << np.uint8(slot * bits)
    return packed


def _grid(q: QuantizedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """codes ``[N, K]`` uint8, scales and zeros ``[N, n_groups]``, and the group width."""
    codes = q.codes.cpu().numpy()
    scales = q.scales.cpu().numpy().astype(np.float32)
    zeros = q.zeros.cpu().numpy()
    if not np.array_equal(zeros, np.round(zeros)):
        raise PressoError("MatMulNBits needs integral zero points; this grid has fractional ones")
    return codes, scales, zeros.astype(np.uint8), codes.shape[1] // scales.shape[1]


# --------------------------------------------------------------------------- graph builder


class Graph:
    """Nodes, initializers and graph inputs/outputs under construction, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, hint: str = "c") -> str:
        """An initializer holding ``value`` (a numpy array, or a TensorProto already named)."""
        from onnx import numpy_helper

        if isinstance(value, np.ndarray):
            value = numpy_helper.from_array(value, self.fresh(hint))
        self.initializers.append(value)
        return value.name

    def op(self, op_type: str, *inputs: str, domain: str = "", n_out: int = 1, **attrs: Any) -> Any:
        """Add a node; its output name (or names, when ``n_out > 1``)."""
        from onnx import helper

        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        node = helper.make_node(
            op_type, list(inputs), outs, self.fresh(op_type), domain=domain, **attrs
        )
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, np.int64), "i")

    def model(self, metadata: dict[str, str]) -> onnx.ModelProto:
        from onnx import helper

        graph = helper.make_graph(
            self.nodes, "presso", self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
            producer_name="presso",
        )
        helper.set_model_props(model, metadata)
        return model


# --------------------------------------------------------------------------- linear layers


def dense_linear(g: Graph, x: str, weight: np.ndarray, hint: str) -> str:
    """``x @ W^T`` with the fp32 weight ``[N, K]`` stored transposed."""
    w = g.const(np.ascontiguousarray(weight.astype(np.float32).T), f"{hint}.weight_t")
    return g.op("MatMul", x, w)


def nbits_linear(
    g: Graph, x: str, q: QuantizedWeight, hint: str, *, accuracy_level: int = 0
) -> tuple[str, dict[str, int]]:
    """``x @ W^T`` as one MatMulNBits node holding ``q``'s codes; the layout facts used."""
    codes, scales, zeros, width = _grid(q)
    n, k = codes.shape
    bits = carrier_bits(q.spec.bits)
    block = block_size(width, hint)
    repeat = width // block  # a presso group spans `repeat` ORT blocks with the same grid
    scales = np.repeat(scales, repeat, axis=1)
    zeros = np.repeat(zeros, repeat, axis=1)
    packed = pack_codes(codes, bits).reshape(n, k // block, block * bits // 8)
    out = g.op(
        "MatMulNBits",
        x,
        g.const(packed, f"{hint}.B"),
        g.const(np.ascontiguousarray(scales.reshape(-1)), f"{hint}.scales"),
        g.const(pack_codes(zeros, bits).reshape(-1), f"{hint}.zero_points"),
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=block,
        accuracy_level=accuracy_level,
    )
    return out, {"bits": q.spec.bits, "carrier_bits": bits, "block_size": block}


def qdq_linear(g: Graph, x: str, q: QuantizedWeight, hint: str) -> tuple[str, dict[str, int]]:
    """``x @ W^T`` as blocked DequantizeLinear (uint4 or uint8 codes ``[K, N]``) then MatMul."""
    from onnx import TensorProto, helper

    codes, scales, zeros, width = _grid(q)
    bits = 4 if q.spec.bits <= 4 else 8
    dtype = TensorProto.UINT4 if bits == 4 else TensorProto.UINT8

    def tensor(values: np.ndarray, name: str) -> Any:
        # ONNX stores uint4 two to a byte, first element in the low nibble: pack_codes' order.
        flat = values.reshape(1, -1)
        raw = pack_codes(flat, 4) if bits == 4 else flat
        return helper.make_tensor(g.fresh(name), dtype, values.shape, raw.tobytes(), raw=True)

    w = g.op(
        "DequantizeLinear",
        g.const(tensor(np.ascontiguousarray(codes.T), f"{hint}.codes_t")),
        g.const(np.ascontiguousarray(scales.T), f"{hint}.scales_t"),
        g.const(tensor(np.ascontiguousarray(zeros.T), f"{hint}.zeros_t")),
        axis=0,
        block_size=width,
    )
    return g.op("MatMul", x, w), {"bits": q.spec.bits, "carrier_bits": bits, "block_size": width}


def linear(
    g: Graph,
    x: str,
    weight: QuantizedWeight | torch.Tensor,
    hint: str,
    *,
    fmt: str = "matmulnbits",
    accuracy_level: int = 0,
    bias: torch.Tensor | None = None,
) -> tuple[str, dict[str, int]]:
    """One linear layer at its level: dense MatMul for a float weight, else ``fmt``'s kernel."""
    if hasattr(weight, "codes"):
        if fmt == "qdq":
            out, facts = qdq_linear(g, x, weight, hint)  # type: ignore[arg-type]
        else:
            out, facts = nbits_linear(g, x, weight, hint, accuracy_level=accuracy_level)  # type: ignore[arg-type]
    else:
        out, facts = dense_linear(g, x, weight.detach().cpu().numpy(), hint), {}  # type: ignore[union-attr]
    if bias is not None:
        out = g.op("Add", out, g.const(bias.detach().float().cpu().numpy(), f"{hint}.bias"))
    return out, facts


def linear_model(
    weight: QuantizedWeight | torch.Tensor | list,
    *,
    fmt: str = "matmulnbits",
    accuracy_level: int = 0,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A one-layer model ``y = x @ W^T``, ``x`` fp32 ``[rows, in_features]`` (rows dynamic).
    Given a list of weights, one layer per weight, all on ``x``, outputs ``y``, ``y1``, ...
    (for timing a layer over weight copies that do not fit in cache)."""
    from onnx import TensorProto, helper

    _check_format(fmt)
    _onnx()
    weights = weight if isinstance(weight, list) else [weight]
    out_f, in_f = weights[0].shape
    g = Graph()
    g.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", in_f]))
    for i, w in enumerate(weights):
        name = "linear" if i == 0 else f"linear{i}"
        y, facts = linear(g, "x", w, name, fmt=fmt, accuracy_level=accuracy_level)
        out = "y" if i == 0 else f"y{i}"
        g.nodes.append(helper.make_node("Identity", [y], [out]))
        g.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, ["rows", out_f]))
    return g.model({"presso.format": fmt}), facts


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise PressoError(f"ONNX weight format {fmt!r}: choose one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- the Llama graph


class _Llama:
    """Emits a LlamaForCausalLM forward into a :class:`Graph` (see the module docstring)."""

    def __init__(self, handle: ModelHandle, g: Graph, *, fmt: str, accuracy_level: int) -> None:
        self.handle, self.g, self.fmt, self.accuracy_level = handle, g, fmt, accuracy_level
        self.head_dim = handle.blocks[0].self_attn.head_dim
        self.facts: dict[str, dict[str, int]] = {}
        #: Biases of pruned producers, sliced (others: the module's own).
        self.biases: dict[str, torch.Tensor] = {}

    def rms_norm(self, x: str, module: Any) -> str:
        g = self.g
        var = g.op("ReduceMean", g.op("Mul", x, x), g.ints(-1), keepdims=1)
        eps = g.const(np.array(module.variance_epsilon, np.float32), "eps")
        scaled = g.op("Mul", x, g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, eps))))
        return g.op("Mul", scaled, g.const(_np(module.weight), "norm.weight"))

    def linear(self, x: str, name: str, weights: dict[str, Any]) -> str:
        module = self.handle.linear(name)
        weight = weights.get(name, self.handle.dense_weight(name))
        out, facts = linear(
            self.g,
            x,
            weight,
            name,
            fmt=self.fmt,
            accuracy_level=self.accuracy_level,
            bias=self.biases.get(name, module.bias),
        )
        if facts:
            self.facts[name] = facts
        return out

    def positions(self, ids: str, past_key: str | None) -> tuple[str, str, str]:
        """Rotary ``cos``/``sin`` ``[seq, head_dim]`` of this call's tokens and the additive
        causal mask ``[seq, past + seq]``."""
        g = self.g
        zero, one = g.ints(0), g.ints(1)
        seq = g.op("Squeeze", g.op("Shape", ids, start=1, end=2), zero)
        zero_s = g.op("Squeeze", g.ints(0), zero)  # Range takes scalars
        past = zero_s
        if past_key is not None:
            past = g.op("Squeeze", g.op("Shape", past_key, start=2, end=3), zero)
        total = g.op("Add", past, seq)
        step = g.op("Squeeze", one, zero)
        query_pos = g.op("Range", past, total, step)
        key_pos = g.op("Range", zero_s, total, step)
        hidden = g.op(
            "Greater", g.op("Unsqueeze", key_pos, zero), g.op("Unsqueeze", query_pos, one)
        )
        mask = g.op(
            "Where", hidden, g.const(np.array(MASKED, np.float32)), g.const(np.array(0, np.float32))
        )
        cos_table, sin_table = self._rope_tables()
        return g.op("Gather", cos_table, query_pos), g.op("Gather", sin_table, query_pos), mask

    def _rope_tables(self) -> tuple[str, str]:
        import torch

        model = self.handle.model
        n = model.config.max_position_embeddings
        with torch.no_grad():
            pos = torch.arange(n)[None]
            cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), pos)
        return self.g.const(_np(cos[0]), "rope.cos"), self.g.const(_np(sin[0]), "rope.sin")

    def rotate(self, x: str, cos: str, sin: str) -> str:
        """``x * cos + rotate_half(x) * sin`` on the last axis (transformers' convention)."""
        g, half = self.g, self.head_dim // 2
        first = g.op("Slice", x, g.ints(0), g.ints(half), g.ints(-1))
        second = g.op("Slice", x, g.ints(half), g.ints(self.head_dim), g.ints(-1))
        rotated = g.op("Concat", g.op("Neg", second), first, axis=-1)
        return g.op("Add", g.op("Mul", x, cos), g.op("Mul", rotated, sin))

    def attention(
        self,
        x: str,
        block: str,
        weights: dict[str, Any],
        rope: tuple[str, str, str],
        past: tuple[str, str] | None,
    ) -> tuple[str, tuple[str, str]]:
        """Grouped-query causal attention; returns its output and the (key, value) cache
        ``[batch, kv_heads, past + seq, head_dim]`` after this call."""
        g, d = self.g, self.head_dim
        cos, sin, mask = rope
        attn = f"{block}.self_attn"
        # Heads kept (all, unless the structured kind pruned whole KV groups): from the shapes.
        heads, kv = self.heads_of(block, weights)
        rep = heads // kv
        # Query heads are grouped by the key/value head they share: [b, kv, rep, seq, d].
        q = g.op("Reshape", self.linear(x, f"{attn}.q_proj", weights), g.ints(0, 0, kv, rep, d))
        q = self.rotate(g.op("Transpose", q, perm=[0, 2, 3, 1, 4]), cos, sin)
        k = g.op("Reshape", self.linear(x, f"{attn}.k_proj", weights), g.ints(0, 0, kv, d))
        k = self.rotate(g.op("Transpose", k, perm=[0, 2, 1, 3]), cos, sin)
        v = g.op("Reshape", self.linear(x, f"{attn}.v_proj", weights), g.ints(0, 0, kv, d))
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        if past is not None:
            k = g.op("Concat", past[0], k, axis=2)
            v = g.op("Concat", past[1], v, axis=2)
        two = g.ints(2)
        scale = g.const(np.array(self.handle.module(attn).scaling, np.float32), "scaling")
        k_t = g.op("Unsqueeze", g.op("Transpose", k, perm=[0, 1, 3, 2]), two)
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k_t), scale), mask)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), g.op("Unsqueeze", v, two))
        context = g.op("Transpose", context, perm=[0, 3, 1, 2, 4])
        context = g.op("Reshape", context, g.ints(0, 0, heads * d))
        return self.linear(context, f"{attn}.o_proj", weights), (k, v)

    def heads_of(self, block: str, weights: dict[str, Any]) -> tuple[int, int]:
        """Query and KV heads of ``block``'s attention as its weights have them."""
        attn = f"{block}.self_attn"
        rows = [
            weights.get(n, self.handle.dense_weight(n)).shape[0] // self.head_dim
            for n in (f"{attn}.q_proj", f"{attn}.k_proj")
        ]
        return rows[0], rows[1]

    def mlp(self, x: str, block: str, weights: dict[str, Any]) -> str:
        g = self.g
        gate = self.linear(x, f"{block}.mlp.gate_proj", weights)
        up = self.linear(x, f"{block}.mlp.up_proj", weights)
        act = g.op("Mul", gate, g.op("Sigmoid", gate))
        return self.linear(g.op("Mul", act, up), f"{block}.mlp.down_proj", weights)

    def lm_head(self, hidden: str, ids: str) -> str:
        """Logits ``[batch, seq, vocab]``; a Gemm against the ``[vocab, hidden]`` matrix, so a tied
        head shares the embedding's initializer instead of storing it twice."""
        g, model = self.g, self.handle.model
        flat = g.op("Reshape", hidden, g.ints(-1, model.config.hidden_size))
        head = model.lm_head.weight
        tied = head.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        matrix = self.embedding if tied else g.const(_np(head), "lm_head.weight")
        logits = g.op("Gemm", flat, matrix, transB=1)
        shape = g.op("Concat", g.op("Shape", ids), g.ints(head.shape[0]), axis=0)
        return g.op("Reshape", logits, shape)

    def embed(self, ids: str) -> str:
        self.embedding = self.g.const(_np(self.handle.model.model.embed_tokens.weight), "embed")
        return self.g.op("Gather", self.embedding, ids)


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


def _check_llama(handle: ModelHandle) -> None:
    config = handle.model.config
    if handle.kind != "causal-lm" or getattr(config, "model_type", None) != "llama":
        raise PressoError(
            f"ONNX export: {handle.name} is a {getattr(config, 'model_type', '?')} "
            f"{handle.kind}; presso writes ONNX graphs for Llama-family causal LMs only"
        )
    if config.hidden_act != "silu":
        raise PressoError(f"ONNX export: {handle.name} uses {config.hidden_act}, not silu")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type") == "dynamic":  # its tables change with the sequence length
        raise PressoError(f"ONNX export: {handle.name} uses dynamic rope scaling, not supported")


def _dropped(handle: ModelHandle, dropped: Iterable[str]) -> tuple[set[int], set[str]]:
    """Whole blocks dropped (indices) and dropped sublayers (``...self_attn``/``...mlp``)."""
    blocks, sublayers = set(), set()
    names = handle.block_names()
    for target in dropped:
        if target in names:
            blocks.add(names.index(target))
        elif target.rpartition(".")[0] in names and target.endswith((".self_attn", ".mlp")):
            sublayers.add(target)
        else:
            raise PressoError(
                f"dropped: {target!r} is neither a block ({names[0]}, ...) nor a block's "
                "self_attn or mlp"
            )
    return blocks, sublayers


def _present(g: Graph, j: int, cache: tuple[str, str], shape: list[Any]) -> None:
    """Expose attention layer ``j``'s updated key/value cache as graph outputs."""
    from onnx import TensorProto, helper

    for kind, value in zip(("key", "value"), cache):
        g.nodes.append(helper.make_node("Identity", [value], [f"present_{kind}.{j}"]))
        g.outputs.append(
            helper.make_tensor_value_info(f"present_{kind}.{j}", TensorProto.FLOAT, shape)
        )


def _emit_llama(
    handle: ModelHandle,
    weights: dict[str, Any],
    biases: dict[str, torch.Tensor],
    dropped: Iterable[str],
    *,
    fmt: str,
    kv_cache: bool,
    accuracy_level: int,
) -> tuple[Graph, dict[str, dict[str, int]]]:
    from onnx import TensorProto, helper

    g = Graph()
    llama = _Llama(handle, g, fmt=fmt, accuracy_level=accuracy_level)
    llama.biases = biases
    gone_blocks, gone_sublayers = _dropped(handle, dropped)
    g.inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]))
    attention_blocks = [
        f"{handle.blocks_prefix}.{i}"
        for i in range(len(handle.blocks))
        if i not in gone_blocks and f"{handle.blocks_prefix}.{i}.self_attn" not in gone_sublayers
    ]
    # Each layer's cache holds its own KV heads (fewer where whole KV groups are pruned).
    kv_heads = {b: llama.heads_of(b, weights)[1] for b in attention_blocks}
    past: dict[str, tuple[str, str]] = {}
    if kv_cache:
        for j, block in enumerate(attention_blocks):
            past[block] = (f"past_key.{j}", f"past_value.{j}")
            shape = ["batch", kv_heads[block], "past", llama.head_dim]
            for name in past[block]:
                g.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    first_past = past[attention_blocks[0]][0] if past else None
    rope = llama.positions("input_ids", first_past) if attention_blocks else None
    hidden = llama.embed("input_ids")
    for i in range(len(handle.blocks)):
        if i in gone_blocks:
            continue
        block = f"{handle.blocks_prefix}.{i}"
        module = handle.blocks[i]
        if block in attention_blocks:
            normed = llama.rms_norm(hidden, module.input_layernorm)
            out, cache = llama.attention(normed, block, weights, rope, past.get(block))  # type: ignore[arg-type]
            hidden = g.op("Add", hidden, out)
            if kv_cache:
                shape = ["batch", kv_heads[block], "total", llama.head_dim]
                _present(g, attention_blocks.index(block), cache, shape)
        if f"{block}.mlp" not in gone_sublayers:
            normed = llama.rms_norm(hidden, module.post_attention_layernorm)
            hidden = g.op("Add", hidden, llama.mlp(normed, block, weights))
    logits = llama.lm_head(llama.rms_norm(hidden, handle.model.model.norm), "input_ids")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    vocab = handle.model.lm_head.weight.shape[0]
    g.outputs.insert(
        0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", vocab])
    )
    return g, llama.facts


# --------------------------------------------------------------------------- weights and build


def unit_weights(
    handle: ModelHandle,
    plan: Plan,
    *,
    weights: WeightFn | None = None,
    sparse: SparseFn | None = None,
    symmetric: bool = False,
) -> dict[str, QuantizedWeight | torch.Tensor]:
    """The weight each compressed unit of ``plan`` is written with.

    bits only: ``weights(unit, bits)`` (default: RTN of the dense weight at the plan's
    group size). sparsity only: ``sparse(unit, percent)``, the pruned fp32 weight (default:
    magnitude pruning). Both: the pruned weight rounded to its bits with RTN, as presso's
    evaluator does (pruned entries land on the zero code, so they stay exactly zero).
    """
    known = set(handle.unit_names)
    gone = tuple(f"{name}." for name in plan.dropped)
    out: dict[str, Any] = {}
    for unit in plan.units:
        bits, sparsity = _unit_levels(plan, unit)
        if unit not in known:
            raise PressoError(f"plan: {unit!r} is not a unit of {handle.name}")
        if unit.startswith(gone):
            continue  # not in the graph: no weight to load
        try:
            weight = _unit_weight(
                handle,
                unit,
                int(bits),
                int(sparsity),
                plan.group_size,
                weights=weights,
                sparse=sparse,
                symmetric=symmetric,
            )
        except ValueError as err:  # a grid that does not fit the layer
            raise PressoError(f"unit {unit} at w{bits}-s{sparsity}: {err}") from None
        if weight is not None:
            out[unit] = weight
    return out


def _unit_weight(
    handle: ModelHandle,
    unit: str,
    bits: int,
    sparsity: int,
    group_size: int | None,
    *,
    weights: WeightFn | None,
    sparse: SparseFn | None,
    symmetric: bool,
) -> QuantizedWeight | torch.Tensor | None:
    """One unit's weight (see :func:`unit_weights`); None when it stays dense."""
    from presso.compress import QuantSpec, magnitude_prune, quantize_rtn

    spec = None
    if bits < DENSE_BITS:
        spec = QuantSpec(bits=bits, group_size=group_size, symmetric=symmetric)
    if sparsity:
        dense = handle.dense_weight(unit)
        w = sparse(unit, sparsity) if sparse else magnitude_prune(dense, sparsity).weight
        return w if spec is None else quantize_rtn(w, spec)
    if spec is None:
        return None
    return weights(unit, bits) if weights else quantize_rtn(handle.dense_weight(unit), spec)


def build_onnx(
    handle: ModelHandle,
    plan: Plan,
    path: str | Path,
    *,
    weights: WeightFn | None = None,
    sparse: SparseFn | None = None,
    symmetric: bool = False,
    fmt: str = "matmulnbits",
    kv_cache: bool = False,
    accuracy_level: int = 0,
    structures: Sequence[tuple[Structure, StructuredWeight]] = (),
) -> Path:
    """Write ``handle``'s model compressed as ``plan`` to ``path`` (atomically) and return it.

    Graph inputs: ``input_ids`` int64 ``[batch, seq]`` (plus the KV cache with ``kv_cache``);
    output ``logits`` fp32 ``[batch, seq, vocab]``. See :func:`unit_weights` for ``weights``,
    ``sparse`` and ``symmetric``, and the module docstring for ``fmt`` and ``accuracy_level``.
    The model's metadata records each compressed unit's bits, carrier bits and block size
    (``presso.units``) and the dropped modules (``presso.dropped``).
    """
    _onnx()
    _check_format(fmt)
    _check_llama(handle)
    resolved, biases = resolve_weights(
        handle, plan, weights=weights, sparse=sparse, symmetric=symmetric, structures=structures
    )
    g, facts = _emit_llama(
        handle,
        resolved,
        biases,
        plan.dropped,
        fmt=fmt,
        kv_cache=kv_cache,
        accuracy_level=accuracy_level,
    )
    return write_graph(handle, plan, path, g, facts, fmt=fmt, kv_cache=kv_cache)


def resolve_weights(
    handle: ModelHandle,
    plan: Plan,
    *,
    weights: WeightFn | None = None,
    sparse: SparseFn | None = None,
    symmetric: bool = False,
    structures: Sequence[tuple[Structure, StructuredWeight]] = (),
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Each unit's weight in the graph (see :func:`unit_weights`; pruned heads and channels
    sliced), and the sliced biases of pruned producers."""
    resolved = unit_weights(handle, plan, weights=weights, sparse=sparse, symmetric=symmetric)
    sliced, biases = _sliced(handle, plan, structures, resolved, symmetric)
    resolved.update(sliced)
    return resolved, biases


def write_graph(
    handle: ModelHandle,
    plan: Plan,
    path: str | Path,
    g: Graph,
    facts: dict[str, dict[str, int]],
    *,
    fmt: str,
    kv_cache: bool,
) -> Path:
    """Save graph ``g`` of ``plan`` with presso's metadata (see :func:`build_onnx`)."""
    for unit in plan.units:
        _, sparsity = _unit_levels(plan, unit)
        if unit in facts or sparsity:
            facts.setdefault(unit, {})["sparsity"] = int(sparsity)
    metadata = {
        "presso.model": handle.name,
        "presso.format": fmt,
        "presso.units": json.dumps(facts, sort_keys=True),
        "presso.dropped": json.dumps(list(plan.dropped)),
        "presso.kv_cache": json.dumps(kv_cache),
        "presso.session_config": json.dumps(SESSION_CONFIG),
    }
    return save_model(g.model(metadata), Path(path))


def _sliced(
    handle: ModelHandle,
    plan: Plan,
    structures: Sequence[tuple[Structure, StructuredWeight]],
    resolved: dict[str, Any],
    symmetric: bool,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The smaller weights of pruned heads and FFN channels (see :func:`presso.surgery.shrink`):
    producers' kept rows (of their quantized level in ``resolved`` when they have bits), the
    consumer's kept and updated columns (rounded to its bits with RTN on the plan's grid, as
    the evaluator rounds them); and the producers' biases' kept rows."""
    from presso.compress import QuantizedWeight, QuantSpec, quantize_rtn, structure_columns
    from presso.spaces._structured import StructuredKind

    given = {s.consumer for s, _ in structures}
    missing = sorted(set(plan.compressed(StructuredKind.name)) - given)
    if missing:
        raise PressoError(
            f"ONNX graph: {len(missing)} units have structured levels but no kept weights were "
            f"given ({missing[0]}, ...); build it through presso.runtimes"
        )
    out: dict[str, torch.Tensor] = {}
    biases: dict[str, torch.Tensor] = {}
    gone = tuple(f"{name}." for name in plan.dropped)
    for structure, kept in structures:
        if structure.consumer.startswith(gone):
            continue
        kv_rows = structure_columns(kept.kept, structure.kv_rows)
        for names, rows in ((structure.producers, kept.kept_columns()), (structure.kv, kv_rows)):
            for name in names:
                q = resolved.get(name)
                if isinstance(q, QuantizedWeight):
                    out[name] = q.rows(rows)
                elif q is not None:
                    raise PressoError(
                        f"unit {name}: its {structure.what} are pruned and it is also sparse; "
                        "pruned heads and channels are built dense or quantized"
                    )
                else:
                    out[name] = handle.dense_weight(name)[rows]
                bias = handle.linear(name).bias
                if bias is not None:
                    biases[name] = bias.detach()[rows]
        bits = _unit_levels(plan, structure.consumer)[0]
        if bits < DENSE_BITS:
            spec = QuantSpec(bits=int(bits), group_size=plan.group_size, symmetric=symmetric)
            try:
                out[structure.consumer] = quantize_rtn(kept.weight, spec)
            except ValueError as err:
                raise PressoError(f"unit {structure.consumer}: {err}") from None
        else:
            out[structure.consumer] = kept.weight
    return out, biases


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` so that a reader sees the old file or the new one; tensors go
    to ``<name>.data`` beside it when the model is too big for one protobuf message."""
    onnx = _onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > INLINE_LIMIT
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        data = f"{path.name}.data"
        onnx.save_model(
            model,
            staged,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data,
        )
        if external:
            os.replace(Path(tmp) / data, path.parent / data)
        os.replace(staged, path)
    return path


#: Session config entries an exported model needs to compute what presso scored: ORT fuses
#: DequantizeLinear+MatMul into MatMulNBits at accuracy level 4 (int8 activations) unless told
#: otherwise. Recorded in every model's ``presso.session_config`` metadata.
SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}


def make_session(model: str | Path | bytes, *, threads: int | None = 1, device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` on ``device`` with ``threads`` intra-op threads
    (None: ORT's default, all physical cores) and exact fp32 math for fused QDQ weights."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("onnxruntime", "onnx", "running an ONNX model") from None
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in SESSION_CONFIG.items():  # the QDQ model's numbers: those of its weights
        options.add_session_config_entry(key, value)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=execution_providers(device))


def execution_providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for ``device`` (cpu, or cuda: the CUDA provider
    first), or a PressoError when this onnxruntime cannot run on it."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise PressoError(
            "onnxruntime here has no CUDA execution provider: install onnxruntime-gpu, "
            "or use device cpu (--device cpu on the command line)"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
